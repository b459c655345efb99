"""The one registry helper under every extension point (t3d_trl/registry.py)."""

from __future__ import annotations

import pytest

from t3d_trl.registry import Registry, alias_key


def _registry() -> Registry:
    registry = Registry("widget", hint="register one with register_widget", key=alias_key)
    registry.register("alpha", 1, aliases=("A-1", "first one"), builtin=True)
    registry.register("beta", 2)
    return registry


def test_names_aliases_and_the_mapping_view():
    registry = _registry()
    assert registry.names() == ("alpha", "beta") and list(registry) == ["alpha", "beta"] and len(registry) == 2
    assert registry.choices() == ("alpha", "beta", "A-1", "first one")
    for spelling in ("alpha", "ALPHA", "a_1", "First-One"):  # aliases and names match ignoring case and separators
        assert registry.resolve(spelling) == "alpha" and registry[spelling] == 1 and spelling in registry
    assert "gamma" not in registry and 3 not in registry
    assert registry.aliases() == {"A-1": "alpha", "first one": "alpha"} and registry.is_builtin("a1")


def test_an_unknown_name_says_what_is_accepted_and_how_to_add_one():
    with pytest.raises(ValueError) as error:
        _registry().get_entry("gamma")
    assert str(error.value) == (
        "Unknown widget 'gamma'; choose from alpha, beta (or the aliases A-1, first one); register one with "
        "register_widget."
    )
    with pytest.raises(KeyError):
        _registry()["gamma"]


def test_taken_names_need_overwrite_and_built_ins_never_move():
    registry = _registry()
    registry.register("beta", 2)  # the same entry again: accepted
    with pytest.raises(ValueError, match=r"A widget is already registered as 'beta' \('beta'\); pass overwrite=True"):
        registry.register("beta", 3)
    registry.register("beta", 3, overwrite=True)
    assert registry["beta"] == 3
    with pytest.raises(ValueError, match="'a1' is the built-in widget 'alpha', which cannot be replaced"):
        registry.register("gamma", 4, aliases=("a1",), overwrite=True)
    with pytest.raises(ValueError, match="built-in widget 'alpha' cannot be removed"):
        registry.unregister("alpha")
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("", 5)


def test_an_alias_taken_over_moves_and_unregister_drops_every_spelling():
    registry = _registry()
    registry.register("gamma", 3, aliases=("third",))
    registry.register("delta", 4, aliases=("third",), overwrite=True)  # the alias moves; gamma stays
    assert registry.resolve("third") == "delta" and registry["gamma"] == 3
    assert registry.unregister("delta") == 4
    assert "delta" not in registry and "third" not in registry and registry.names() == ("alpha", "beta", "gamma")
