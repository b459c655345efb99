"""Per-token statistics of the LM head over a training window, computed in chunks so no float32 logits window exists.

The objectives never need the logits themselves, only a few numbers per window position ``i``:

* the log-normaliser ``log Z_i = logsumexp_v ℓ_{i,v}`` (float32);
* the logit of the label ``ℓ_{i, x0_i}`` and of the fake token ``ℓ_{i, x̂_i}`` (log-probs are ``ℓ − log Z``);
* the entropy ``H_i(T) = log Z_i(T) − Σ_v p_{i,v}(T) ℓ_{i,v} / T`` of ``p(T) = softmax(ℓ / T)`` (dParallel);
* the argmax ``argmax_v ℓ_{i,v}`` (accuracy, dParallel's "already right" set);
* for the reference, the fake token itself: ``x̂_i = argmax_v ℓ_{i,v}`` at temperature 0, else a draw from
  ``softmax(ℓ_i / T)``.

:func:`window_statistics` computes them from logits, one chunk of positions at a time in float32 (so a half-precision
window is never copied whole to float32). :class:`StatisticsHead` computes them *inside* the model's forward, in
place of its LM head, from the last hidden states: each chunk's logits exist only while its statistics are computed,
and with gradients each chunk runs under activation checkpointing, so the backward recomputes the chunk's logits
instead of keeping them. The values and gradients equal those computed from the whole logits (up to float rounding).
For SDAR's 151,936-entry vocabulary, a batch of 8 × 1,024 window positions has 5 GB of float32 logits; in chunks of
256 tokens it has 156 MB at a time. The price is one more LM-head matmul per student chunk in the backward (the
recompute), which matters only where the head dominates the model's cost; the backward of ``log Z`` and the gathered
logits is written by hand (:class:`_NormalizerAndGathers`), so a chunk's backward holds two copies of its logits, not
five. See ``docs/design.md`` ("Window statistics, computed in chunks from hidden states").
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "StatisticsHead",
    "StatisticsRequest",
    "TokenStatistics",
    "head_gives_logits",
    "statistics_head",
    "window_statistics",
]

_LOG_Z, _LABEL, _FAKE, _ENTROPY, _ARGMAX, _FAKE_TOKEN = range(6)
NUM_STATISTICS = 6


@dataclass
class StatisticsRequest:
    """What to compute at every window position.

    Attributes:
        labels: ``[b, W]`` label ids (their logits are always computed).
        fake_tokens: ``[b, W]`` fake token ids whose logits are wanted (the student's side of DDO), or ``None``.
        draw_fake_temperature: draw the fake tokens from these logits at this temperature (the reference's side of
            DDO; 0 is the argmax), or ``None``.
        entropy_temperature: compute ``H(T)`` at this temperature, or ``None``.
        generator: random generator for drawing fake tokens at a positive temperature.
    """

    labels: Tensor
    fake_tokens: Tensor | None = None
    draw_fake_temperature: float | None = None
    entropy_temperature: float | None = None
    generator: torch.Generator | None = None


class TokenStatistics:
    """The statistics of a window ``[b, W, NUM_STATISTICS]`` with named accessors (see the module docstring)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values

    @property
    def log_normalizer(self) -> Tensor:
        return self.values[..., _LOG_Z]

    @property
    def label_log_probs(self) -> Tensor:
        """``log p(x0_i) = ℓ_{i, x0_i} − log Z_i``."""
        return self.values[..., _LABEL] - self.values[..., _LOG_Z]

    @property
    def fake_log_probs(self) -> Tensor:
        """``log p(x̂_i) = ℓ_{i, x̂_i} − log Z_i`` (when fake tokens were given or drawn)."""
        return self.values[..., _FAKE] - self.values[..., _LOG_Z]

    @property
    def entropy(self) -> Tensor:
        """``H_i(T)`` at the requested entropy temperature."""
        return self.values[..., _ENTROPY]

    @property
    def predictions(self) -> Tensor:
        return self.values[..., _ARGMAX].detach().long()

    @property
    def fake_tokens(self) -> Tensor:
        """The fake tokens drawn from these logits (``draw_fake_temperature``)."""
        return self.values[..., _FAKE_TOKEN].detach().long()


class _NormalizerAndGathers(torch.autograd.Function):
    """``(log Z, ℓ_label, ℓ_fake)`` of logits ``[b, c, V]``, with a backward that builds one ``[b, c, V]`` tensor.

    ``∂/∂ℓ = g_Z · softmax(ℓ) + g_label · onehot(label) + g_fake · onehot(fake)``: written in place into the
    ``exp(ℓ − log Z)`` it allocates, where autograd's ``logsumexp`` and two ``gather`` backwards would hold four
    vocabulary-wide tensors at once (two of them zeros to scatter into). Same values, in fewer passes over the
    vocabulary; the peak memory of a chunk's backward drops from about five copies of its logits to two.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, fake_tokens: Tensor | None):  # type: ignore[override]
        log_z = torch.logsumexp(logits, dim=-1)
        label = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        fake = (
            torch.zeros_like(log_z) if fake_tokens is None else logits.gather(-1, fake_tokens.unsqueeze(-1)).squeeze(-1)
        )
        ctx.save_for_backward(logits, log_z, labels, fake_tokens)
        return log_z, label, fake

    @staticmethod
    def backward(ctx, grad_log_z: Tensor, grad_label: Tensor, grad_fake: Tensor):  # type: ignore[override]
        logits, log_z, labels, fake_tokens = ctx.saved_tensors
        grad = (logits - log_z.unsqueeze(-1)).exp_().mul_(grad_log_z.unsqueeze(-1))
        grad.scatter_add_(-1, labels.unsqueeze(-1), grad_label.unsqueeze(-1).to(grad.dtype))
        if fake_tokens is not None:
            grad.scatter_add_(-1, fake_tokens.unsqueeze(-1), grad_fake.unsqueeze(-1).to(grad.dtype))
        return grad, None, None


def _chunk_statistics(
    logits: Tensor,
    labels: Tensor,
    fake_tokens: Tensor | None,
    draw_temperature: float | None,
    entropy_temperature: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """The statistics of one chunk of logits ``[b, c, V]`` (upcast to float32 here, one chunk at a time)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if draw_temperature is not None:
        with torch.no_grad():
            if draw_temperature == 0:
                fake_tokens = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / draw_temperature, dim=-1).flatten(0, 1)
                fake_tokens = torch.multinomial(probs, 1, generator=generator).view(labels.shape)
    log_z, label, fake = _NormalizerAndGathers.apply(logits, labels, fake_tokens)
    zeros = torch.zeros_like(log_z)
    drawn = zeros if draw_temperature is None else fake_tokens.to(log_z.dtype)
    entropy = zeros
    if entropy_temperature is not None:
        scaled = logits / entropy_temperature
        log_probs = scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)
        entropy = -(log_probs.exp() * log_probs.masked_fill(torch.isneginf(log_probs), 0.0)).sum(-1)
    argmax = logits.detach().argmax(-1).to(log_z.dtype)
    return torch.stack([log_z, label, fake, entropy, argmax, drawn], dim=-1)


def _chunks(rows: int, length: int, chunk_size: int | None) -> list[slice]:
    """Slices of window positions holding about ``chunk_size`` tokens each over the ``rows`` of the batch."""
    size = length if not chunk_size else max(1, int(chunk_size) // max(rows, 1))
    return [slice(start, min(start + size, length)) for start in range(0, length, size)] or [slice(0, 0)]


def _fake_slice(request: StatisticsRequest, part: slice) -> Tensor | None:
    return None if request.fake_tokens is None else request.fake_tokens[:, part]


def window_statistics(logits: Tensor, request: StatisticsRequest, chunk_size: int | None = None) -> TokenStatistics:
    """The statistics of window logits ``[b, W, V]``, computed about ``chunk_size`` tokens (rows × positions) at a time
    (all at once when ``None``); gradients flow to ``logits``."""
    parts = [
        _chunk_statistics(
            logits[:, part],
            request.labels[:, part],
            _fake_slice(request, part),
            request.draw_fake_temperature,
            request.entropy_temperature,
            request.generator,
        )
        for part in _chunks(logits.shape[0], logits.shape[1], chunk_size)
    ]
    return TokenStatistics(torch.cat(parts, dim=1))


class StatisticsHead(nn.Module):
    """Stands in for a model's LM head during one forward and returns the window's statistics instead of logits.

    Called by the model on the last hidden states ``[b, n, H]``, it keeps the last ``W`` positions (the window of
    ``request.labels``; ``n ≥ W`` when the model cannot skip the other positions), runs the original head on
    ``chunk_size`` positions at a time and returns ``[b, W, NUM_STATISTICS]``. With gradients enabled each chunk runs
    under :func:`torch.utils.checkpoint.checkpoint`, so only the hidden states are kept for the backward. The original
    head is called as a module, so the hooks of DeepSpeed ZeRO-3, FSDP and PEFT on it keep working.

    Args:
        head: the model's LM head (``model.get_output_embeddings()``).
        request: what to compute (labels, fake tokens...).
        chunk_size: window tokens (batch rows × positions) per chunk.
    """

    def __init__(self, head: nn.Module, request: StatisticsRequest, chunk_size: int) -> None:
        super().__init__()
        self.head = head
        self.request = request
        self.chunk_size = chunk_size
        self.calls = 0

    @property
    def weight(self) -> Tensor:  # models that read ``lm_head.weight`` directly get the real weight
        return self.head.weight

    def _run(self, hidden: Tensor, labels: Tensor, fake_tokens: Tensor | None) -> Tensor:
        request = self.request
        return _chunk_statistics(
            self.head(hidden),
            labels,
            fake_tokens,
            request.draw_fake_temperature,
            request.entropy_temperature,
            request.generator,
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        self.calls += 1
        request = self.request
        window = request.labels.shape[1]
        hidden_states = hidden_states[:, hidden_states.shape[1] - window :]
        parts = []
        for part in _chunks(hidden_states.shape[0], window, self.chunk_size):
            arguments = (hidden_states[:, part], request.labels[:, part], _fake_slice(request, part))
            if torch.is_grad_enabled() and hidden_states.requires_grad:
                parts.append(checkpoint(self._run, *arguments, use_reentrant=False))
            else:
                parts.append(self._run(*arguments))
        return torch.cat(parts, dim=1)


def head_gives_logits(model: nn.Module) -> bool:
    """Whether the model's logits are its LM head's output as is (so a :class:`StatisticsHead` may stand in for it):
    false for models that post-process logits, e.g. Gemma's soft-capping or Cohere's logit scale."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(config, "logit_scale", None)
    return getattr(config, "final_logit_softcapping", None) is None and scale in (None, 1, 1.0)


@contextmanager
def statistics_head(model: nn.Module, request: StatisticsRequest, chunk_size: int):
    """Within the block, ``model``'s LM head returns the window statistics of ``request``: yields the
    :class:`StatisticsHead` (its ``calls`` say whether the model used it); the original head is put back afterwards,
    even on error."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None).")
    replacement = StatisticsHead(head, request, chunk_size)
    model.set_output_embeddings(replacement)
    try:
        yield replacement
    finally:
        model.set_output_embeddings(head)
