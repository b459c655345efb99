"""Block grids: where the decoding blocks of a row lie, relative to its prompt.

"Block" means two things in diffusion LMs, and a model family says which one its models have
(:attr:`t3d_trl.models.families.ModelFamily.decoding_grid`; ``docs/design.md``, "The block grid is one object"):

* ``"absolute"`` (:class:`AbsoluteGrid`): block id = position // B, from the first prompt token. Block-causal models
  (SDAR) fix it through their attention: whole prompt blocks are prefilled and the prompt's tail shares the first
  decoded block (SDAR's ``generate.py``, JetEngine).
* ``"response"`` (:class:`ResponseGrid`): blocks start at the first generated token. Bidirectional mask predictors
  (LLaDA's ``generate.py``, dllm, Fast-dLLM), whose blocks are only a decoding schedule.

Every use of the grid asks a :class:`BlockGrid` (never compares grid names): the decoding canvas, the validation of a
teacher's ``step_map``, the training blocks of the collator, the left-truncation of long prompts (which must keep the
grid under the step map) and the conversion of imported trajectories. Each method works on Python ints, NumPy arrays
and torch tensors alike.

This module imports only the standard library: it is copied into the ``custom_generate/generate.py`` of checkpoints.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from ..registry import Registry

__all__ = ["GRIDS", "AbsoluteGrid", "BlockGrid", "ResponseGrid", "get_grid"]


class BlockGrid(abc.ABC):
    """Where blocks start for a row with ``P`` prompt tokens (see the module docstring).

    A subclass sets :attr:`name` and implements :meth:`grid_start` and :meth:`cut_unit`; everything else follows.
    """

    #: registry name (``"absolute"``, ``"response"``)
    name: ClassVar[str] = ""
    #: one phrase for messages and docs
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def grid_start(self, prompt_length: Any) -> Any:
        """The position at which block 0 starts (``g``)."""

    @abc.abstractmethod
    def cut_unit(self, block_size: Any) -> Any:
        """The multiple of tokens a prompt may lose on the left without moving the completion's blocks."""

    def completion_offset(self, prompt_length: Any) -> Any:
        """``o = P − g``: the grid position of the first completion token, so that completion token ``i`` lies in
        block ``⌊(o + i) / B⌋``."""
        return prompt_length - self.grid_start(prompt_length)

    def first_block_start(self, prompt_length: Any, block_size: int) -> Any:
        """``s = P − (o mod B)``: the position where the first decoded block starts (the prompt's last ``o mod B``
        tokens share it)."""
        return prompt_length - self.completion_offset(prompt_length) % block_size

    def prompt_cut(self, prompt_length: Any, max_prompt_length: int, block_size: Any) -> Any:
        """Tokens to remove from the left of a prompt longer than ``max_prompt_length`` so that the completion's
        blocks stay where they were: the excess ``P − max`` rounded up to a multiple of :meth:`cut_unit` (whole blocks
        on the absolute grid, which keeps every position mod ``B``; the excess itself on the response grid).

        Args:
            prompt_length: ``P`` (an int or an array of them).
            max_prompt_length: the most prompt tokens to keep.
            block_size: the block size whose grid must be kept (for trajectories, the lcm of the teacher's and the
                training one), an int or an array.

        Returns:
            ``0`` where the prompt fits, else the tokens to cut. A cut of ``P`` or more (a limit below the prompt's
            share of its first block) leaves no prompt: the caller refuses that row.
        """
        excess = prompt_length - max_prompt_length
        unit = self.cut_unit(block_size)
        return (excess > 0) * (-(-excess // unit) * unit)


class AbsoluteGrid(BlockGrid):
    """Block id = position // B from the first prompt token (block-causal models such as SDAR)."""

    name = "absolute"
    description = "blocks counted from the first prompt token (block id = position // B)"

    def grid_start(self, prompt_length: Any) -> Any:
        return prompt_length * 0

    def cut_unit(self, block_size: Any) -> Any:
        return block_size  # whole blocks keep every position mod B


class ResponseGrid(BlockGrid):
    """Blocks start at the first generated token (bidirectional mask predictors such as LLaDA)."""

    name = "response"
    description = "blocks counted from the first generated token"

    def grid_start(self, prompt_length: Any) -> Any:
        return prompt_length

    def cut_unit(self, block_size: Any) -> Any:
        return 1  # the blocks follow the completion wherever the prompt ends


#: the registered grids by name
GRIDS: Registry[BlockGrid] = Registry("block grid")
GRIDS.register(AbsoluteGrid.name, AbsoluteGrid(), builtin=True)
GRIDS.register(ResponseGrid.name, ResponseGrid(), builtin=True)


def get_grid(name: str) -> BlockGrid:
    """The grid called ``name`` (``"absolute"`` or ``"response"``).

    Raises:
        ValueError: naming the value and the registered grids.
    """
    return GRIDS.get_entry(name)
