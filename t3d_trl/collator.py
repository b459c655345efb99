"""Batch collation of teacher trajectories into the training layouts (``docs/design.md``, "Training layouts").

:class:`DataCollatorForTrajectory` turns rows ``{prompt_ids, completion_ids, step_map, example_index}`` (as made by
:func:`t3d_trl.data.prepare_trajectory_dataset`) into model inputs and per-token training targets, fully vectorised
over a ``[batch, max_len]`` grid (index arithmetic on padded tensors; no Python loop over rows or tokens).

Block-causal family (SDAR, any decoder LM run with a 4D mask), per example with ``P`` prompt tokens, training
block size ``B`` and ``tail = P mod B``::

    [ left padding ; prompt (P) ; x0 = completion + EOS fill (C') ; prompt[P-tail:] + x_t (tail + C') ]
      positions:     0 .. P-1     P .. P+C'-1                        P-tail .. P+C'-1 (the clean twins')
      stream:        CLEAN        CLEAN                              NOISY

and the attention rule of :mod:`t3d_trl.masks` on ``(block = position // B, stream, valid)``. Every row ends at
the last column, so the noisy streams of all rows lie in the last ``W = max_rows(tail + C')`` columns: the model
is asked for ``logits_to_keep = W`` logits and the per-token targets are returned on that window.

Bidirectional family (LLaDA-style mask predictors): the single stream ``[left padding ; prompt ; x_t]`` with
``x_t`` at a global step cut, a 2D attention mask, and targets on the last ``W = max_rows(C')`` columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_number
from .layouts import ATTENTION_LAYOUTS, CompletionTargets, TrajectoryBatch, training_layout_class
from .losses import path_weights
from .masks import block_ids
from .models.families import FAMILIES, family_class
from .models.grid import GRIDS, BlockGrid, get_grid
from .states import StateContext, build_state, state_requests
from .trajectory import (
    random_state_mask,
    random_token_replacement,
    sample_mask_ratios,
    trajectory_state_mask,
    within_block_steps,
)

__all__ = ["DataCollatorForTrajectory"]

_REQUIRED_KEYS = ("prompt_ids", "completion_ids", "step_map", "example_index")
_STATE_SAMPLINGS = ("trajectory", "random")
_STATE_ORDERS = ("latest", "earliest")


def _pad_rows(rows: Sequence[Any], pad_value: int, name: str = "ids") -> tuple[Tensor, Tensor]:
    """Right-pad variable-length integer rows into ``[batch, max_len]`` with one flat tensor and a length mask.

    ``out[r, j] = rows[r][j]`` for ``j < len(rows[r])`` and ``pad_value`` elsewhere.

    Returns:
        ``(padded int64 [batch, max_len], lengths int64 [batch])``.

    Raises:
        ValueError: naming the batch row and ``name`` when a row holds something else than integers.
    """
    tensors = []
    for index, row in enumerate(rows):
        try:
            tensor = torch.as_tensor(row).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"Batch row {index}: `{name}` must be a list of integers ({error}).") from None
        if tensor.numel() and (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool):
            raise ValueError(f"Batch row {index}: `{name}` must hold integers, got {tensor.dtype} values.")
        tensors.append(tensor.to(torch.int64))
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    width = int(lengths.max()) if len(tensors) else 0
    out = torch.full((len(tensors), width), pad_value, dtype=torch.int64)
    if width:
        out[torch.arange(width)[None, :] < lengths[:, None]] = torch.cat(tensors)
    return out, lengths


@dataclass
class DataCollatorForTrajectory:
    """Collates teacher trajectories into training batches for T3D and its baselines.

    Training blocks follow ``block_alignment``: ``"absolute"`` (block id = position // B, the grid of block-causal
    decoding) or ``"response"`` (blocks start at the completion's first token, the grid of bidirectional decoding);
    by default the family's decoding grid. Every completion is completed to a block boundary with ``A`` slots
    (``C' = C + A``). After a completion that ends with EOS (the teacher stopped) they are EOS tokens that count as
    decoded last (step ``max_i step_i + 1``); only the first ``num_eos_tokens`` of them are trained on, with the
    path weight of the last step, ``1/S``. After a completion without EOS (cut at the rollout's length limit) they
    hold the mask token in every state and carry no target: the teacher never said the text ends there, and at
    inference those slots are still masked. A state ``x_t`` is sampled per example, deterministically from
    ``(seed, example_index)``:

    * ``state_sampling="trajectory"``: a ratio ``r`` with ``P(r) ∝ r^mask_ratio_power`` and, in every training
      block of ``n`` completion tokens, the ``⌊r·n⌋`` latest-decoded tokens masked
      (:func:`~t3d_trl.trajectory.trajectory_state_mask`);
    * ``state_sampling="random"`` (the ``sft`` objective): every token masked with probability ``t ~ U(0, 1]``
      (:func:`~t3d_trl.trajectory.random_state_mask`).

    Masked positions hold ``mask_token_id``; with ``random_token_ratio > 0``, ``max(1, ⌊ratio · n⌋)`` of an example's
    ``n`` masked positions hold a random token of the tokenizer's vocabulary instead (the official ``random_ratio``,
    :func:`~t3d_trl.trajectory.random_token_replacement`).

    Outputs (``b`` rows, ``N`` columns, noisy window of ``W`` columns):

    * ``input_ids``, ``position_ids``, ``block_ids``, ``stream_ids``, ``valid``: ``[b, N]``;
    * ``attention_mask``: block-causal family: ``[b, 1, N, N]`` bool (``attention_layout="dense"``, sdpa), its
      additive float32 form (``"eager"``), or absent (``"flex"`` / ``"deferred"``: the model family builds
      the mask on the accelerator — a flex ``BlockMask`` or the dense mask — from ``block_ids``/``stream_ids``/``valid``;
      :class:`~t3d_trl.T3DTrainer` uses ``"deferred"``, which keeps the ``N²`` mask off the host. For ``"flex"``, build
      :func:`~t3d_trl.masks.layout_block_mask` from ``block_ids``/``stream_ids``/``valid`` on device);
      bidirectional family: the 2D ``[b, N]`` int64 ``valid`` mask;
    * ``labels`` (x0 token at every window column, the input token outside the noisy stream), ``loss_mask``
      (bool, masked trained completion tokens), ``path_weights`` (float32, ``w_i = (S − σ_i)/S`` over the training
      blocks, 0 outside the completion): ``[b, W]``;
    * ``example_index`` (int64) and ``mask_ratio`` (float32, ``r`` or ``t``): ``[b]``;
    * for every extra state ``name`` (``extra_states``): ``{name}_input_ids`` ``[b, N]`` and ``{name}_loss_mask``
      ``[b, W]``;
    * ``logits_to_keep``: the int ``W``.

    Args:
        mask_token_id: id of the mask token.
        pad_token_id: id used for padding (also the label of padding columns).
        eos_token_id: id that ends a completion, appended to complete its last block.
        block_size: training block size ``B``.
        num_eos_tokens: how many appended EOS tokens are trained on (official ``post_num: 2``).
        state_sampling: ``"trajectory"`` or ``"random"``.
        mask_ratios: candidate ratios ``r`` for trajectory states.
        mask_ratio_power: exponent of ``P(r) ∝ r^power``.
        state_order: ``"latest"`` (a real trajectory state) or ``"earliest"`` (the official code).
        random_token_ratio: fraction of masked inputs replaced by random tokens.
        vocab_size: vocabulary size; random tokens are drawn from ``[0, vocab_size)`` without the mask token when
            ``random_token_ids`` is not given.
        random_token_ids: the ids random tokens are drawn from (the official code: the tokenizer's vocabulary, not the
            padded embedding rows); :class:`~t3d_trl.T3DTrainer` passes the tokenizer's ids without its special
            tokens.
        seed: seed of the per-example hash.
        family: a registered model family (``"block_causal"``, ``"bidirectional"``), which decides the layout.
        block_alignment: ``"absolute"``, ``"response"`` or ``None`` (the family's decoding grid).
        extra_states: further states of every example to return besides the main one, built by registered state
            builders (:mod:`t3d_trl.states`): names (``("complement",)``) or names mapped to their parameters
            (``{"partial": {"ratios": (0.75, 0.5, 0.25)}}``). Each adds ``{name}_input_ids`` ``[b, N]`` and
            ``{name}_loss_mask`` ``[b, W]``; the rest of the batch is the main state's. :class:`~t3d_trl.T3DTrainer`
            sets them from the objectives of ``loss_type`` (``T3DConfig.extra_states``).
        attention_layout: ``"dense"``, ``"eager"``, ``"flex"`` or ``"deferred"`` (block-causal family only).
        return_tensors: only ``"pt"``.
    """

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    block_size: int
    num_eos_tokens: int = 2
    state_sampling: str = "trajectory"
    mask_ratios: Sequence[float] = (1.0, 0.75, 0.5, 0.25)
    mask_ratio_power: float = 8.0
    state_order: str = "latest"
    random_token_ratio: float = 0.0
    vocab_size: int | None = None
    random_token_ids: Sequence[int] | None = None
    seed: int = 42
    family: str = "block_causal"
    attention_layout: str = "dense"
    block_alignment: str | None = None
    extra_states: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            if getattr(self, name) is None:
                raise ValueError(f"DataCollatorForTrajectory needs `{name}`; got None.")
        check_number("block_size", self.block_size, 1, False, None, True, False)
        check_number("num_eos_tokens", self.num_eos_tokens, 0, False, None, True, False)
        check_number("mask_ratio_power", self.mask_ratio_power, None, False, None, False, False)
        check_number("random_token_ratio", self.random_token_ratio, 0.0, False, 1.0, False, False)
        for index, ratio in enumerate(self.mask_ratios):
            check_number(f"mask_ratios[{index}]", ratio, 0.0, False, 1.0, False, False)
        for name, allowed in (
            ("state_sampling", _STATE_SAMPLINGS),
            ("state_order", _STATE_ORDERS),
            ("family", FAMILIES.choices()),
            ("attention_layout", ATTENTION_LAYOUTS),
            ("block_alignment", (None, *GRIDS.names())),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        self._layout = training_layout_class(self.family)
        if self.random_token_ratio > 0 and self.vocab_size is None and self.random_token_ids is None:
            raise ValueError(
                "random_token_ratio > 0 needs `random_token_ids` (the tokenizer's ids random tokens are drawn from) "
                "or `vocab_size` (then every id below it but the mask token)."
            )
        if self.random_token_ids is not None:
            self._token_pool = torch.as_tensor(list(self.random_token_ids), dtype=torch.int64).unique()
        elif self.vocab_size is not None:
            pool = torch.arange(int(self.vocab_size))
            self._token_pool = pool[pool != self.mask_token_id]
        else:
            self._token_pool = None
        if self.return_tensors != "pt":
            raise ValueError(f"Only return_tensors='pt' is supported, got {self.return_tensors!r}.")
        self.mask_ratios = tuple(float(r) for r in self.mask_ratios)
        self.extra_states = state_requests(self.extra_states)

    @property
    def grid(self) -> BlockGrid:
        """The training block grid: ``block_alignment``, or the family's decoding grid when unset."""
        return get_grid(self.block_alignment or family_class(self.family).decoding_grid)

    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, features: list[dict[str, Any]]) -> TrajectoryBatch:
        """Collate trajectory rows into a training batch (see the class docstring for the outputs)."""
        if not features:
            raise ValueError("DataCollatorForTrajectory got an empty list of features.")
        missing = [key for key in _REQUIRED_KEYS if key not in features[0]]
        if missing:
            raise ValueError(
                f"Trajectory rows lack {missing}; expected keys {list(_REQUIRED_KEYS)}. "
                "Prepare the dataset with `t3d_trl.data.prepare_trajectory_dataset`."
            )
        prompt, prompt_len = _pad_rows([f["prompt_ids"] for f in features], self.pad_token_id, "prompt_ids")
        completion, completion_len = _pad_rows(
            [f["completion_ids"] for f in features], self.pad_token_id, "completion_ids"
        )
        steps, steps_len = _pad_rows([f["step_map"] for f in features], 0, "step_map")
        if not torch.equal(steps_len, completion_len):
            bad = int(torch.nonzero(steps_len != completion_len)[0, 0])
            raise ValueError(
                f"step_map and completion_ids differ in length in batch row {bad} "
                f"(example_index {features[bad]['example_index']})."
            )
        example_index = torch.as_tensor([int(f["example_index"]) for f in features], dtype=torch.int64)
        comp, ratio, extra = self._completion_targets(prompt_len, completion, completion_len, steps, example_index)
        layout = self._layout
        batch = layout.build(prompt, prompt_len, comp, self.block_size, self.pad_token_id, self.attention_layout)
        for name, targets in extra.items():  # the same layout, only the noisy tokens and the loss mask differ
            other = layout.build(prompt, prompt_len, targets, self.block_size, self.pad_token_id, "deferred")
            batch[f"{name}_input_ids"] = other["input_ids"]
            batch[f"{name}_loss_mask"] = other["loss_mask"]
        batch["example_index"] = example_index
        batch["mask_ratio"] = ratio
        return batch

    # ------------------------------------------------------------------------------------------------------------
    def _completion_targets(
        self,
        prompt_len: Tensor,
        completion: Tensor,
        completion_len: Tensor,
        steps: Tensor,
        example_index: Tensor,
    ) -> tuple[CompletionTargets, Tensor, dict[str, CompletionTargets]]:
        """Per-completion-token tensors ``[b, C'_max]`` aligned at the completion start (column ``j`` = token ``j``),
        the mask ratio of every row, and the targets of every extra state (:mod:`t3d_trl.states`).

        With ``o = P`` on the absolute grid and ``o = 0`` on the response grid, ``block_j = (o + j) // B`` and every
        completion is completed to a block boundary with ``A = (−(o + C)) mod B`` slots. After a completion that ends
        with EOS they are EOS tokens (decoded last; the first ``num_eos_tokens`` trained). After a completion cut
        without EOS they are *open* slots, as at inference where the teacher had not decided them: the mask token in
        every state, never trained, outside the state's ranking. The state, the loss mask and the path weights are
        computed here and placed into the layouts by index arithmetic.
        """
        size = self.block_size
        grid_start = self.grid.grid_start(prompt_len)  # where block 0 starts
        origin = prompt_len - grid_start  # position of the completion's first token on that grid
        last = completion.gather(1, (completion_len - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = ((completion_len > 0) & (last == self.eos_token_id))[:, None]
        full_len = completion_len + torch.remainder(-(origin + completion_len), size)
        width = int(full_len.max())
        column = torch.arange(width)[None, :]
        real = column < completion_len[:, None]
        fill = (column < full_len[:, None]) & ~real
        eos_fill, open_fill = fill & ended, fill & ~ended
        valid = real | eos_fill  # tokens with a known target
        trained = real | (eos_fill & (column - completion_len[:, None] < self.num_eos_tokens))
        completion = F.pad(completion, (0, width - completion.shape[1]), value=self.pad_token_id)
        steps = F.pad(steps, (0, width - steps.shape[1]), value=0)
        x0 = torch.where(real, completion, torch.where(eos_fill, self.eos_token_id, self.pad_token_id))
        x0 = torch.where(open_fill, self.mask_token_id, x0)
        # Appended EOS tokens are the latest-decoded tokens of their block: step max_i step_i + 1.
        last_step = torch.where(real, steps, torch.full_like(steps, -1)).amax(dim=1, keepdim=True) if width else steps
        steps = torch.where(real, steps, last_step + 1)
        block = block_ids(origin[:, None] + column, size)

        layout = self._layout
        if self.state_sampling == "trajectory":
            ratio = sample_mask_ratios(example_index, self.seed, self.mask_ratios, self.mask_ratio_power)
            drawn = trajectory_state_mask(steps, block, valid, ratio, order=self.state_order)
            state, loss = layout.trajectory_state(drawn, trained, block, valid, example_index, self.seed)
        else:
            drawn, ratio = random_state_mask(valid, example_index, self.seed)
            state, loss = drawn, drawn & trained

        sigma, steps_in_block = within_block_steps(steps, block, real)
        sigma = torch.where(eos_fill, steps_in_block - 1, sigma)
        weights = path_weights(sigma, steps_in_block).to(torch.float32)  # w_i = (S − σ_i)/S per training block
        weights = torch.where(valid, weights, torch.zeros_like(weights))
        noisy = self._corrupt(x0, state, open_fill, example_index)
        targets = CompletionTargets(x0, noisy, full_len, grid_start, loss, weights)
        extra = {}
        if self.extra_states:
            context = StateContext(
                steps, block, valid, trained, drawn, example_index, self.seed, self.state_sampling, layout
            )
            for name, parameters in self.extra_states.items():
                noised, loss_mask = build_state(name, parameters, context)
                noisy_state = self._corrupt(x0, noised, open_fill, example_index)
                extra[name] = dataclasses.replace(targets, noisy=noisy_state, loss=loss_mask)
        return targets, ratio.to(torch.float32), extra

    def _corrupt(self, x0: Tensor, state: Tensor, open_fill: Tensor, example_index: Tensor) -> Tensor:
        """``x_t``: the mask token (or a random token) where ``state`` is set, the mask token in open slots."""
        noisy = random_token_replacement(
            x0, state, example_index, self.seed, self.random_token_ratio, self._token_pool, self.mask_token_id
        )
        return torch.where(open_fill, self.mask_token_id, noisy)
