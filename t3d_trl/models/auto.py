"""The one thing importing t3d-trl does to transformers: few-step ``generate()`` for its checkpoints on load.

A checkpoint that t3d-trl saved carries a :class:`~t3d_trl.DiffusionGenerationConfig` in ``generation_config.json``.
Loaded with an ``AutoModel*`` class while t3d-trl is imported, it must decode in few steps, never
autoregressively in their place (transformers accepts ``steps_per_block=`` because the loaded generation config has
such a field, and would silently run its own decoding). So importing t3d-trl installs a load hook on the
``AutoModel*`` classes' ``from_pretrained``:

* after loading, a model whose generation config (or the checkpoint's ``generation_config.json``) has the diffusion
  fields gets :func:`t3d_trl.patch_model` (its few-step ``generate``); other models are returned untouched;
* a checkpoint of ``model_type: sdar`` that transformers does not know (SDAR ships remote code that needs
  flash-attn) is loaded natively as Qwen3 after :func:`t3d_trl.register_sdar`, at the moment it is loaded; with
  ``trust_remote_code=True`` its own code still wins. The model type is read from ``config.json`` *before* loading,
  so a released checkpoint, whose config has an ``auto_map`` to its remote code, loads without transformers asking
  on stdin whether to run that code. ``AutoConfig.from_pretrained`` (which ``AutoTokenizer`` calls) gets the same
  mapping. When ``trust_remote_code=True`` asks for SDAR's own code and that code cannot be imported (it needs
  flash-attn and transformers 4), the error says to load without it.

The hook is installed lazily: if ``transformers.models.auto.auto_factory`` is not imported yet, a finder on
``sys.meta_path`` installs it right after that module is first imported, so importing t3d-trl stays cheap and the
order of imports does not matter. Set ``T3D_TRL_NO_AUTO_PATCH=1`` to turn it off. See ``docs/design.md``
("Importing t3d-trl").
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys

__all__ = ["DISABLE_ENV_VAR", "install_load_hook"]

#: environment variable that disables the load hook
DISABLE_ENV_VAR = "T3D_TRL_NO_AUTO_PATCH"
_TARGET = "transformers.models.auto.auto_factory"
_MARKER = "_t3d_trl_load_hook"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _has_diffusion_fields(config) -> bool:
    from ..generation.configuration import is_diffusion_generation_config

    return is_diffusion_generation_config(config)


def _saved_generation_config(name_or_path, kwargs: dict):
    """The checkpoint's ``generation_config.json`` when transformers did not load it (models that cannot generate)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except (OSError, ValueError, TypeError):
        return None


def _is_unknown_sdar(error: ValueError) -> bool:
    return "model type `sdar`" in str(error)


def _checkpoint_model_type(name_or_path, kwargs: dict) -> str | None:
    """``model_type`` of the checkpoint's ``config.json``, read without resolving any class (``None`` when it cannot
    be read: transformers then reports the problem itself)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return None
    from transformers import PretrainedConfig

    try:
        config_dict, _ = PretrainedConfig.get_config_dict(
            name_or_path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        )
    except (OSError, ValueError, TypeError):
        return None
    model_type = config_dict.get("model_type")
    return model_type if isinstance(model_type, str) else None


def _map_sdar_before_loading(name_or_path, kwargs: dict) -> bool:
    """Register the SDAR mapping when ``name_or_path`` is an SDAR checkpoint; whether it is one."""
    if kwargs.get("config") is not None and not isinstance(kwargs["config"], (str, os.PathLike)):
        return False  # the caller built the config: nothing is resolved from the checkpoint's config.json
    if _checkpoint_model_type(name_or_path, kwargs) != "sdar":
        return False
    from .sdar import register_sdar

    register_sdar()
    return True


class _SDARRemoteCodeError(ImportError):
    """SDAR's remote code asked for with ``trust_remote_code=True`` and not importable."""


def _sdar_remote_code_error(name_or_path, error: Exception) -> ImportError:
    reason = " ".join(str(error).split())[:300]
    return _SDARRemoteCodeError(
        f"SDAR's own modeling code in {str(name_or_path)!r} cannot be imported here ({type(error).__name__}: "
        f"{reason}); it needs flash-attn and transformers 4. Load the checkpoint without `trust_remote_code=True`: "
        "with t3d-trl imported, SDAR checkpoints load natively as transformers' Qwen3 (the same weights and logits; "
        'see docs/generation.md, "Loading and patching a model").'
    )


def _wrap(from_pretrained, patch: bool = True):
    """``from_pretrained`` (the plain function of an auto class) with the load hook around it (``patch=False``: the
    SDAR mapping only, for ``AutoConfig``)."""
    if getattr(from_pretrained, _MARKER, False):
        return from_pretrained

    @functools.wraps(from_pretrained)
    def hooked(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = _load(from_pretrained, cls, pretrained_model_name_or_path, *args, **kwargs)
        if not patch:
            return model
        config = getattr(model, "generation_config", None)
        if not _has_diffusion_fields(config) and isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            config = _saved_generation_config(pretrained_model_name_or_path, kwargs)
        if _has_diffusion_fields(config) and not hasattr(model, "diffusion_family"):
            from ..generation import patch_model

            model.generation_config = config
            patch_model(model)
        return model

    setattr(hooked, _MARKER, True)
    return hooked


def _load(from_pretrained, cls, name_or_path, *args, **kwargs):
    """``from_pretrained``, SDAR checkpoints mapped onto Qwen3 first."""
    is_sdar = _map_sdar_before_loading(name_or_path, kwargs)
    try:
        return from_pretrained(cls, name_or_path, *args, **kwargs)
    except ImportError as error:
        if is_sdar and kwargs.get("trust_remote_code") and not isinstance(error, _SDARRemoteCodeError):
            raise _sdar_remote_code_error(name_or_path, error) from error
        raise
    except ValueError as error:
        if not _is_unknown_sdar(error):
            raise
        from .sdar import register_sdar

        register_sdar()
        return from_pretrained(cls, name_or_path, *args, **kwargs)


def _install_on(auto_factory) -> None:
    """Wrap ``from_pretrained`` of ``AutoConfig``, of the auto base class and of every auto class already created
    from it."""
    from transformers.models.auto.configuration_auto import AutoConfig

    function = AutoConfig.__dict__.get("from_pretrained")
    if isinstance(function, classmethod):
        AutoConfig.from_pretrained = classmethod(_wrap(function.__func__, patch=False))
    classes = [auto_factory._BaseAutoModelClass]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        function = cls.__dict__.get("from_pretrained")
        if isinstance(function, classmethod):
            cls.from_pretrained = classmethod(_wrap(function.__func__))


class _AutoFactoryFinder(importlib.abc.MetaPathFinder):
    """Installs the hook right after ``transformers.models.auto.auto_factory`` is first imported."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_install(module):
            exec_module(module)
            _install_on(module)

        spec.loader.exec_module = exec_and_install
        return spec


def install_load_hook() -> None:
    """Install the load hook (idempotent; a no-op when ``T3D_TRL_NO_AUTO_PATCH=1``)."""
    if os.environ.get(DISABLE_ENV_VAR, "") == "1":
        return
    module = sys.modules.get(_TARGET)
    if module is not None:
        _install_on(module)
    elif not any(isinstance(finder, _AutoFactoryFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoFactoryFinder())
