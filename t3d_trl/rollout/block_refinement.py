"""Trajectories of diffusers' block-refinement pipelines, recorded step by step (see ``docs/rollouts.md``, "Bring
your own trajectories").

diffusers' ``LLaDA2Pipeline`` (with its ``BlockRefinementScheduler``, diffusers 0.42) refines a sequence block after
block on the absolute grid (block id = position // block length) and, after every refinement step, calls
``callback_on_step_end(pipeline, step, timestep, callback_kwargs)``: ``step`` counts the call's refinement steps
over all blocks from 0, and ``callback_kwargs`` holds the tensors named in ``callback_on_step_end_tensor_inputs``,
among them ``transfer_index``, the positions of the block the scheduler commits at this step. A
:class:`BlockRefinementRecorder` passed as that callback turns them into the step at which every token was committed,
and :meth:`BlockRefinementRecorder.records` gives one record per sequence, which
:func:`~t3d_trl.rollout.import_trajectories` reads with ``format="diffusers"``.

The recorder does not import diffusers: it only reads the tensors the pipeline hands to its callback.
``DiffusionGemmaPipeline`` hands over only ``canvas`` and ``logits`` (it renoises uncommitted positions with random
tokens instead of masks), so its commits cannot be read from the callback.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BlockRefinementRecorder"]


class BlockRefinementRecorder:
    """A ``callback_on_step_end`` that records the step at which a block-refinement pipeline committed each token.

    ```python
    recorder = BlockRefinementRecorder()
    output = pipe(
        input_ids=prompt_ids, gen_length=256, block_length=4, num_inference_steps=4, editing_threshold=None,
        output_type="seq", callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=recorder.tensor_inputs,
    )
    trajectories = import_trajectories(
        recorder.records(output.sequences), tokenizer, format="diffusers", block_size=4, steps_per_block=4
    )
    ```

    At every step it keeps, for each position of the active block, the pipeline's ``step`` when the position was
    committed: ``transfer_index`` there, the pipeline wrote the sampled token (``block_x`` equals
    ``sampled_tokens``) and it is not the mask. Commits the pipeline did not apply (rows frozen after their EOS) are
    not recorded. Replacements of committed tokens (``editing_transfer_index``, diffusers' editing, on by default in
    ``LLaDA2Pipeline``: pass ``editing_threshold=None``) are recorded as edits, and the import drops the sequences
    whose kept tokens were edited. The steps are the pipeline's own: they also count the steps that commit nothing in
    a sequence (the extra pass that ends a block, and steps of other sequences of the batch), which the import
    removes (``docs/rollouts.md``, "Bring your own trajectories").

    The pipeline gives every prompt of a batch the same length (its padding counts on the block grid), so roll out
    one prompt per call, or prompts of equal length given as ``input_ids``. A new call (``step`` 0) starts a new
    recording.

    Args:
        mask_token_id: the mask token (default: the pipeline's ``mask_token_id``).
    """

    #: the tensors to pass as ``callback_on_step_end_tensor_inputs``
    tensor_inputs = ["block_x", "active_block", "transfer_index", "editing_transfer_index", "sampled_tokens"]

    def __init__(self, mask_token_id: int | None = None) -> None:
        self.mask_token_id = mask_token_id
        self._prompt: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._steps: torch.Tensor | None = None
        self._edited: torch.Tensor | None = None

    def __call__(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Record the commits of one refinement step (the signature of ``callback_on_step_end``).

        Returns:
            An empty dict: the pipeline's tensors are left as they are.

        Raises:
            ValueError: when the pipeline was not asked for :attr:`tensor_inputs`, or no mask token is known.
        """
        missing = [name for name in self.tensor_inputs if name not in callback_kwargs]
        if missing:
            raise ValueError(
                f"The pipeline passed no {missing} to the recorder: call it with "
                "callback_on_step_end_tensor_inputs=recorder.tensor_inputs."
            )
        mask_token_id = (
            self.mask_token_id if self.mask_token_id is not None else getattr(pipeline, "mask_token_id", None)
        )
        if mask_token_id is None:
            raise ValueError(
                "No mask token: give BlockRefinementRecorder(mask_token_id=...) or a pipeline tokenizer with one."
            )
        window = callback_kwargs["block_x"].detach()
        committing = callback_kwargs["transfer_index"].detach()
        start = window.shape[1] - committing.shape[1]
        if step == 0 or self._steps is None:
            # the first step of a call: the non-mask positions of the first block are the prompt's
            prompt_length = start + int((~callback_kwargs["active_block"][0].detach()).sum())
            self._prompt = window[:, :prompt_length].clone()
            self._steps = torch.full(window.shape, -1, dtype=torch.long, device=window.device)
            self._edited = torch.zeros(window.shape, dtype=torch.bool, device=window.device)
        grow = window.shape[1] - self._steps.shape[1]
        if grow > 0:
            self._steps = torch.cat([self._steps, self._steps.new_full((window.shape[0], grow), -1)], dim=1)
            self._edited = torch.cat([self._edited, self._edited.new_zeros((window.shape[0], grow))], dim=1)
        block = window[:, start:]
        written = block == callback_kwargs["sampled_tokens"].detach()
        committed = committing & written & (block != mask_token_id)
        self._steps[:, start:] = torch.where(committed, torch.full_like(block, int(step)), self._steps[:, start:])
        self._edited[:, start:] |= callback_kwargs["editing_transfer_index"].detach() & written
        self._tokens = window.clone()
        return {}

    def records(self, sequences: torch.Tensor) -> list[dict[str, Any]]:
        """One record per sequence of the last call: ``prompt_ids``, ``completion_ids`` (the pipeline's
        ``sequences``, tokens after EOS included), ``step_map`` (the pipeline's step of each token's commit, ``-1``
        for tokens never committed) and ``edited`` (whether each token was replaced after its commit).

        Args:
            sequences: the pipeline's output ``sequences`` (``output_type="seq"`` or ``"text"``), ``[batch, gen_length]``.

        Raises:
            ValueError: when nothing was recorded, or ``sequences`` are not those of the recorded call.
        """
        if self._steps is None or self._prompt is None or self._tokens is None:
            raise ValueError(
                "Nothing was recorded: pass the recorder to the pipeline as callback_on_step_end (with "
                "callback_on_step_end_tensor_inputs=recorder.tensor_inputs)."
            )
        sequences = torch.as_tensor(sequences).to(self._steps.device)
        prompt_length = self._prompt.shape[1]
        batch, length = sequences.shape
        if batch != self._steps.shape[0]:
            raise ValueError(f"`sequences` has {batch} rows but the recorded call decoded {self._steps.shape[0]}.")
        pad = max(0, prompt_length + length - self._steps.shape[1])  # blocks never reached: every row ended before
        steps = torch.nn.functional.pad(self._steps, (0, pad), value=-1)[:, prompt_length : prompt_length + length]
        edited = torch.nn.functional.pad(self._edited, (0, pad), value=False)[:, prompt_length : prompt_length + length]
        tokens = torch.nn.functional.pad(self._tokens, (0, pad), value=-1)[:, prompt_length : prompt_length + length]
        if ((steps >= 0) & (tokens != sequences)).any():
            raise ValueError("`sequences` are not the tokens of the pipeline call this recorder recorded last.")
        return [
            {
                "prompt_ids": self._prompt[row].tolist(),
                "completion_ids": sequences[row].tolist(),
                "step_map": steps[row].tolist(),
                "edited": edited[row].tolist(),
            }
            for row in range(batch)
        ]
