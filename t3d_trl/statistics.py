"""Per-token statistics of the LM head over a training window, computed in chunks so no float32 logits window exists.

The objectives never need the logits themselves, only a few numbers per window position ``i``:

* the log-normaliser ``log Z_i = logsumexp_v ℓ_{i,v}`` (float32);
* the logit of the label ``ℓ_{i, x0_i}`` and of the fake token ``ℓ_{i, x̂_i}`` (log-probs are ``ℓ − log Z``);
* the argmax ``argmax_v ℓ_{i,v}`` (accuracy, dParallel's "already right" set);
* for the reference, the fake token itself: ``x̂_i = argmax_v ℓ_{i,v}`` at temperature 0, else a draw from
  ``softmax(ℓ_i / T)``;
* any *registered statistic* an objective asks for (:func:`register_statistic`): a function of a chunk's float32
  logits, such as the entropy ``H_i(T) = −Σ_v p_{i,v}(T) log p_{i,v}(T)`` of ``p(T) = softmax(ℓ / T)`` (``"entropy"``,
  dParallel's), or the soft cross-entropy ``−Σ_v q_{i,v} log softmax(ℓ_i)_v`` against given target distributions
  ``q`` (``"soft_cross_entropy"``, the anchor's: with ``q`` the teacher's probabilities,
  ``KL(q ‖ p_θ) = soft cross-entropy − H(q)``).

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

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .registry import Registry

__all__ = [
    "STATISTICS",
    "Statistic",
    "StatisticsHead",
    "StatisticsRequest",
    "TokenStatistics",
    "entropy",
    "head_gives_logits",
    "register_statistic",
    "soft_cross_entropy",
    "statistics_head",
    "window_chunks",
    "window_statistics",
]

_LOG_Z, _LABEL, _FAKE, _ARGMAX, _FAKE_TOKEN = range(5)
#: the statistics every request computes; registered ones follow them in request order
NUM_STATISTICS = 5


# ------------------------------------------------------------------------------------------ registered statistics
@dataclass(frozen=True)
class Statistic:
    """A per-position statistic of the logits that objectives may ask for by name.

    Attributes:
        name: the name objectives ask for.
        function: ``(logits [b, c, V] in float32, **parameters) -> [b, c]``; gradients flow through it to the student.
        parameters: the parameters it takes, with their defaults.
    """

    name: str
    function: Callable[..., Tensor]
    parameters: Mapping[str, Any] = field(default_factory=dict)


#: registered statistics by name
STATISTICS: Registry[Statistic] = Registry(
    "window statistic", hint="register one with t3d_trl.statistics.register_statistic"
)


def register_statistic(
    name: str,
    function: Callable[..., Tensor],
    *,
    parameters: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Statistic:
    """Make ``function(logits, **parameters) -> [b, c]`` a statistic objectives can ask for by ``name``.

    It runs on each chunk of window logits (float32, ``[b, c, V]``), inside the checkpointed chunk when the statistics
    are computed in the forward, so its vocabulary-wide intermediates exist one chunk at a time.

    Args:
        name: the name objectives ask for (``Objective.statistics``).
        function: the statistic.
        parameters: the keyword arguments it takes, with their defaults.
        overwrite: replace a statistic registered under ``name`` (not a built-in one).
    """
    return STATISTICS.register(name, Statistic(name, function, dict(parameters or {})), overwrite=overwrite)


def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``H(T) = −Σ_v p_v log p_v`` of ``p = softmax(ℓ / T)`` at every position (``0 · log 0 = 0``)."""
    scaled = logits / temperature
    log_probs = scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)
    return -(log_probs.exp() * log_probs.masked_fill(torch.isneginf(log_probs), 0.0)).sum(-1)


STATISTICS.register("entropy", Statistic("entropy", entropy, {"temperature": 1.0}), builtin=True)


class _SoftCrossEntropy(torch.autograd.Function):
    """``CE = (Σ_v q_v) · log Z − Σ_v q_v ℓ_v`` of logits ``[b, c, V]`` and targets ``q``, with a backward that builds
    one ``[b, c, V]`` tensor: ``∂CE/∂ℓ = (Σ_v q_v) · softmax(ℓ) − q``, written in place into the ``exp(ℓ − log Z)`` it
    allocates (autograd through ``log_softmax``, a product and a sum would hold about four vocabulary-wide tensors)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        log_z = torch.logsumexp(logits, dim=-1)
        mass = targets.sum(-1)
        dot = torch.where(targets > 0, targets * logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
        ctx.save_for_backward(logits, targets, log_z, mass)
        return mass * log_z - dot.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        logits, targets, log_z, mass = ctx.saved_tensors
        result = (logits - log_z.unsqueeze(-1)).exp_().mul_(mass.unsqueeze(-1)).sub_(targets)
        return result.mul_(grad.unsqueeze(-1)), None


def soft_cross_entropy(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """``CE(q, ℓ) = −Σ_v q_v log softmax(ℓ)_v`` at every position, for target distributions ``q`` (``targets``,
    ``[b, c, V]``, rows summing to 1; entries with ``q_v = 0`` contribute nothing). With ``q`` the teacher's
    probabilities, ``CE − H(q) = KL(q ‖ softmax(ℓ))``. Targets carry no gradient; the backward allocates one tensor of
    the logits' size (:class:`_SoftCrossEntropy`).

    Raises:
        ValueError: without ``targets``, or with targets of another shape than the logits.
    """
    if targets is None:
        raise ValueError("The statistic 'soft_cross_entropy' needs `targets`, the target distributions [b, W, V].")
    if targets.shape != logits.shape:
        raise ValueError(
            f"The statistic 'soft_cross_entropy' got targets of shape {tuple(targets.shape)} for logits of shape "
            f"{tuple(logits.shape)}; they must be the same (a distribution over the vocabulary at every position)."
        )
    return _SoftCrossEntropy.apply(logits, targets.detach().to(logits.dtype))


STATISTICS.register(
    "soft_cross_entropy", Statistic("soft_cross_entropy", soft_cross_entropy, {"targets": None}), builtin=True
)


@dataclass
class StatisticsRequest:
    """What to compute at every window position.

    Attributes:
        labels: ``[b, W]`` label ids (their logits are always computed).
        fake_tokens: ``[b, W]`` fake token ids whose logits are wanted (the student's side of DDO), or ``None``.
        draw_fake_temperature: draw the fake tokens from these logits at this temperature (the reference's side of
            DDO; 0 is the argmax), or ``None``.
        extra: registered statistics to compute, by name, with their parameters (``{"entropy": {"temperature":
            0.5}}``); missing parameters take the statistic's defaults. A tensor parameter shaped ``[b, W, ...]`` (the
            labels' ``[b, W]`` first) is a per-position value: each chunk of positions gets its slice, like the
            labels (the soft cross-entropy's ``targets``); other values are passed whole.
        generator: random generator for drawing fake tokens at a positive temperature.
    """

    labels: Tensor
    fake_tokens: Tensor | None = None
    draw_fake_temperature: float | None = None
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        for name, parameters in self.extra.items():
            statistic = STATISTICS.get_entry(name)
            unknown = sorted(set(parameters) - set(statistic.parameters))
            if unknown:
                raise ValueError(
                    f"The statistic {name!r} takes {sorted(statistic.parameters) or 'no parameters'}, got {unknown}."
                )

    def extra_calls(self) -> list[tuple[Callable[..., Tensor], dict[str, Any]]]:
        """The registered statistics to compute, in order, as ``(function, parameters)``."""
        calls = []
        for name, parameters in self.extra.items():
            statistic = STATISTICS.get_entry(name)
            calls.append((statistic.function, {**statistic.parameters, **parameters}))
        return calls

    def _per_position(self, value: Any) -> bool:
        """Whether a parameter value is a per-position tensor ``[b, W, ...]`` over this request's window."""
        return isinstance(value, Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == tuple(self.labels.shape)

    def _map_positions(self, function: Callable[[Tensor], Tensor]) -> dict[str, Any]:
        """``extra`` with ``function`` applied to every per-position tensor parameter."""
        return {
            name: {key: function(value) if self._per_position(value) else value for key, value in parameters.items()}
            for name, parameters in self.extra.items()
        }

    def chunk(self, part: slice) -> StatisticsRequest:
        """The request of the window positions ``part``: labels, fake tokens and per-position parameters sliced."""
        return replace(
            self,
            labels=self.labels[:, part],
            fake_tokens=None if self.fake_tokens is None else self.fake_tokens[:, part],
            extra=self._map_positions(lambda value: value[:, part]),
        )

    def shifted(self) -> StatisticsRequest:
        """The request one position longer (labels, fake tokens and per-position parameters padded at the end with
        zeros): for heads whose logit of token ``i`` sits at position ``i − 1``, the extra position's statistics are
        dropped by the caller."""
        padded = {
            name: torch.nn.functional.pad(getattr(self, name), (0, 1))
            for name in ("labels", "fake_tokens")
            if getattr(self, name) is not None
        }

        def pad(value: Tensor) -> Tensor:
            return torch.cat([value, value.new_zeros((value.shape[0], 1, *value.shape[2:]))], dim=1)

        return replace(self, **padded, extra=self._map_positions(pad))

    def wrap(self, values: Tensor) -> TokenStatistics:
        """The :class:`TokenStatistics` of values computed for this request."""
        return TokenStatistics(values, tuple(self.extra))


class TokenStatistics:
    """The statistics of a window ``[b, W, NUM_STATISTICS + len(extra)]`` with named accessors (see the module
    docstring); registered statistics are read with ``statistics[name]``."""

    def __init__(self, values: Tensor, extra: tuple[str, ...] = ()) -> None:
        self.values = values
        self.extra = extra

    def __getitem__(self, name: str) -> Tensor:
        """The registered statistic ``name`` at every window position ``[b, W]``."""
        if name not in self.extra:
            raise KeyError(
                f"The statistic {name!r} was not computed (computed: {list(self.extra) or 'none'}); an objective that "
                "reads it declares it with register_objective(..., statistics=...)."
            )
        return self.values[..., NUM_STATISTICS + self.extra.index(name)]

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


def _chunk_statistics(logits: Tensor, request: StatisticsRequest) -> Tensor:
    """The statistics of one chunk of logits ``[b, c, V]`` (upcast to float32 here, one chunk at a time) for the
    request of that chunk (:meth:`StatisticsRequest.chunk`)."""
    labels, fake_tokens = request.labels, request.fake_tokens
    draw_temperature = request.draw_fake_temperature
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if draw_temperature is not None:
        with torch.no_grad():
            if draw_temperature == 0:
                fake_tokens = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / draw_temperature, dim=-1).flatten(0, 1)
                fake_tokens = torch.multinomial(probs, 1, generator=request.generator).view(labels.shape)
    log_z, label, fake = _NormalizerAndGathers.apply(logits, labels, fake_tokens)
    drawn = torch.zeros_like(log_z) if draw_temperature is None else fake_tokens.to(log_z.dtype)
    argmax = logits.detach().argmax(-1).to(log_z.dtype)
    extra = [function(logits, **parameters) for function, parameters in request.extra_calls()]
    return torch.stack([log_z, label, fake, argmax, drawn, *extra], dim=-1)


def window_chunks(rows: int, length: int, chunk_size: int | None) -> list[slice]:
    """Slices of the ``length`` window positions holding about ``chunk_size`` tokens each over the ``rows`` of the
    batch (one slice of every position when ``chunk_size`` is ``None`` or 0)."""
    size = length if not chunk_size else max(1, int(chunk_size) // max(rows, 1))
    return [slice(start, min(start + size, length)) for start in range(0, length, size)] or [slice(0, 0)]


def window_statistics(logits: Tensor, request: StatisticsRequest, chunk_size: int | None = None) -> TokenStatistics:
    """The statistics of window logits ``[b, W, V]``, computed about ``chunk_size`` tokens (rows × positions) at a time
    (all at once when ``None``); gradients flow to ``logits``."""
    parts = [
        _chunk_statistics(logits[:, part], request.chunk(part))
        for part in window_chunks(logits.shape[0], logits.shape[1], chunk_size)
    ]
    return request.wrap(torch.cat(parts, dim=1))


class StatisticsHead(nn.Module):
    """Stands in for a model's LM head during one forward and returns the window's statistics instead of logits.

    Called by the model on the last hidden states ``[b, n, H]``, it keeps the last ``W`` positions (the window of
    ``request.labels``; ``n ≥ W`` when the model cannot skip the other positions), runs the original head on
    ``chunk_size`` positions at a time and returns ``[b, W, NUM_STATISTICS + len(request.extra)]``. With gradients
    enabled each chunk runs under :func:`torch.utils.checkpoint.checkpoint`, so only the hidden states are kept for the
    backward. The original head is called as a module, so the hooks of DeepSpeed ZeRO-3, FSDP and PEFT on it keep
    working.

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

    def _run(self, hidden: Tensor, part: slice) -> Tensor:
        return _chunk_statistics(self.head(hidden), self.request.chunk(part))

    def forward(self, hidden_states: Tensor) -> Tensor:
        self.calls += 1
        request = self.request
        window = request.labels.shape[1]
        hidden_states = hidden_states[:, hidden_states.shape[1] - window :]
        parts = []
        for part in window_chunks(hidden_states.shape[0], window, self.chunk_size):
            if torch.is_grad_enabled() and hidden_states.requires_grad:
                parts.append(checkpoint(self._run, hidden_states[:, part], part, use_reentrant=False))
            else:
                parts.append(self._run(hidden_states[:, part], part))
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
