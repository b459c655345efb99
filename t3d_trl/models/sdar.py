"""SDAR checkpoints loaded natively as the Qwen3 architecture.

SDAR (JetAstra/SDAR) is Qwen3 trained as a block diffusion model: its ``config.json`` has Qwen3's fields and its
weights carry Qwen3's parameter names, but its published remote code needs flash-attn and does not import under
transformers 5. :func:`register_sdar` registers ``model_type: sdar`` with the ``AutoModel*`` classes, mapped onto
transformers' own Qwen3 implementation. t3d-trl calls it where it loads models
(:func:`t3d_trl.models.families.load_pretrained`, ``T3DTrainer`` given a model name, the command line); importing
t3d-trl does not. After it::

    t3d_trl.register_sdar()
    model = AutoModelForCausalLM.from_pretrained("JetLM/SDAR-1.7B-Chat", attn_implementation="sdpa")

loads without remote code and runs with every attention kernel transformers offers (``sdpa``, ``eager``,
``flex_attention``). Passing ``trust_remote_code=True`` still loads the checkpoint's own code, which
:class:`t3d_trl.models.families.StoreKVFamily` drives through its ``store_kv`` cache interface.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3Model


class SDARConfig(Qwen3Config):
    """Configuration of SDAR checkpoints: Qwen3's fields under ``model_type = "sdar"``."""

    model_type = "sdar"


class SDARModel(Qwen3Model):
    """SDAR's backbone, implemented by transformers' Qwen3 model."""

    config_class = SDARConfig


class SDARForCausalLM(Qwen3ForCausalLM):
    """SDAR with its LM head, implemented by transformers' Qwen3 model (logits at position ``i`` predict token ``i``)."""

    config_class = SDARConfig


_registered = False


def register_sdar() -> None:
    """Register ``model_type: sdar`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.

    transformers lets a registered class outside its own package override a checkpoint's remote code even with
    ``trust_remote_code=True``. The SDAR classes are therefore also published in transformers' Qwen3 modules (where
    they are implemented), so the mapping counts as built-in: without ``trust_remote_code`` the checkpoint loads
    natively, with it the checkpoint's own code wins, as for any architecture transformers ships.
    """
    global _registered
    if _registered:
        return
    from transformers.models.qwen3 import configuration_qwen3, modeling_qwen3

    for module, classes in ((configuration_qwen3, (SDARConfig,)), (modeling_qwen3, (SDARModel, SDARForCausalLM))):
        for cls in classes:
            setattr(module, cls.__name__, cls)
            cls.__module__ = module.__name__
    AutoConfig.register("sdar", SDARConfig, exist_ok=True)
    AutoModel.register(SDARConfig, SDARModel, exist_ok=True)
    AutoModelForCausalLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)
    _registered = True
