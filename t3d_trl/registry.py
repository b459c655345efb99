"""One small registry under every extension point: names, aliases, overwriting and "choose from" messages.

t3d-trl's decisions are registries (model families, objectives, window statistics, remasking strategies, evaluation
sets, scorers, demo tasks). Each is a :class:`Registry`, so they all accept and refuse names the same way:

* a name, and each alias, is a non-empty string; looking one up may ignore case and separators (``key=alias_key``);
* registering the same entry under the same name again is accepted; registering another entry under a taken name or
  alias needs ``overwrite=True``; built-in entries are never replaced;
* an unknown name raises a `ValueError` that names the kind, the value and every accepted name, with a hint on how to
  register one;
* a registry reads like a mapping of canonical names (``name in registry``, ``registry[name]``, iteration in
  registration order), where aliases resolve to their entry.

This module imports only the standard library: decoding modules that are copied into checkpoints use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "alias_key"]

T = TypeVar("T")


def alias_key(name: str) -> str:
    """``name`` without case, surrounding spaces, ``-``, ``_`` or inner spaces: ``"MBPP-Sanitized"`` → ``"mbppsanitized"``."""
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def _exact(name: str) -> str:
    return name


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind, with aliases, protected built-ins and helpful errors.

    Args:
        kind: what an entry is, for messages (``"model family"``, ``"objective"``...).
        hint: how to add one, appended to the "unknown name" message (``"register one with t3d_trl.register_family"``).
        key: how names are compared (default exact; :func:`alias_key` ignores case and separators).
    """

    def __init__(self, kind: str, hint: str = "", key: Callable[[str], str] = _exact) -> None:
        self.kind = kind
        self.hint = hint
        self._key = key
        self._entries: dict[str, T] = {}
        self._names: dict[str, str] = {}  # key(name or alias) -> canonical name
        self._aliases: dict[str, str] = {}  # alias as given -> canonical name
        self._builtin: set[str] = set()

    # ------------------------------------------------------------------------------------------------ writing
    def register(
        self, name: str, entry: T, *, aliases: tuple[str, ...] = (), overwrite: bool = False, builtin: bool = False
    ) -> T:
        """Register ``entry`` under ``name`` and ``aliases`` and return it.

        Args:
            name: the canonical name.
            entry: the registered object.
            aliases: further names that resolve to ``name``.
            overwrite: replace an entry registered under ``name`` (or one of ``aliases``) before; built-in entries are
                never replaced.
            builtin: mark the entry as one of t3d-trl's own (it can then never be replaced).

        Raises:
            ValueError: for an empty or non-string name, or a taken name or alias (without ``overwrite``, or held by
                a built-in entry).
        """
        for label in (name, *aliases):
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"A {self.kind} name must be a non-empty string, got {label!r}.")
        for label in (name, *aliases):
            holder = self._names.get(self._key(label))
            if holder is None or (holder == name and self._entries[holder] is entry):
                continue
            if holder in self._builtin:
                raise ValueError(
                    f"{label!r} is the built-in {self.kind} {holder!r}, which cannot be replaced; register yours "
                    "under another name."
                )
            if not overwrite:
                raise ValueError(
                    f"A {self.kind} is already registered as {label!r} ({holder!r}); pass overwrite=True to replace "
                    "it, or register yours under another name."
                )
            if holder != name and self._key(holder) == self._key(label):
                self._drop(holder)  # its canonical name is taken over; an alias of it is only reassigned
        self._entries[name] = entry
        for label in (name, *aliases):
            self._names[self._key(label)] = name
        self._aliases.update({alias: name for alias in aliases})
        if builtin:
            self._builtin.add(name)
        return entry

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` (not a built-in one) and its aliases, and return it."""
        canonical = self.resolve(name)
        if canonical in self._builtin:
            raise ValueError(f"The built-in {self.kind} {canonical!r} cannot be removed.")
        entry = self._entries[canonical]
        self._drop(canonical)
        return entry

    def _drop(self, canonical: str) -> None:
        self._entries.pop(canonical, None)
        self._names = {key: value for key, value in self._names.items() if value != canonical}
        self._aliases = {alias: value for alias, value in self._aliases.items() if value != canonical}

    # ------------------------------------------------------------------------------------------------ reading
    def resolve(self, name: str) -> str:
        """The canonical name of ``name`` (a name or an alias).

        Raises:
            ValueError: naming the kind, the value and every accepted name.
        """
        canonical = self._names.get(self._key(name)) if isinstance(name, str) else None
        if canonical is None:
            aliases = [alias for alias in self._aliases if alias not in self._entries]
            also = f" (or the aliases {', '.join(aliases)})" if aliases else ""
            hint = f"; {self.hint}" if self.hint else ""
            raise ValueError(f"Unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}{also}{hint}.")
        return canonical

    def get_entry(self, name: str) -> T:
        """The entry registered as ``name`` (or under the alias ``name``); raises like :meth:`resolve`."""
        return self._entries[self.resolve(name)]

    def names(self) -> tuple[str, ...]:
        """The canonical names, in registration order."""
        return tuple(self._entries)

    def choices(self) -> tuple[str, ...]:
        """Every accepted spelling as registered: the canonical names, then the aliases (for CLI choices)."""
        return (*self._entries, *(alias for alias in self._aliases if alias not in self._entries))

    def aliases(self) -> dict[str, str]:
        """Alias → canonical name."""
        return dict(self._aliases)

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` resolves to one of t3d-trl's own entries."""
        return self.resolve(name) in self._builtin

    # Mapping over canonical names; lookups resolve aliases
    def __getitem__(self, name: str) -> T:
        canonical = self._names.get(self._key(name)) if isinstance(name, str) else None
        if canonical is None:
            raise KeyError(name)
        return self._entries[canonical]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
