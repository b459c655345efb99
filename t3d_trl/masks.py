"""Attention layouts of block diffusion language models.

Every attention pattern in t3d-trl, at inference and in training, is one rule applied to three per-token
vectors (``docs/design.md``, "The attention rule"):

* ``block``: the block id of the token, ``position // block_size`` (derived from position ids, so that left
  padding cannot shift block boundaries);
* ``stream``: :data:`CLEAN` (committed context: the prompt, decoded blocks, the teacher's final tokens) or
  :data:`NOISY` (the block being denoised, partly masked);
* ``valid``: ``False`` for padding.

The rule, for a query ``q`` and a key ``k``:

* a clean query sees a clean key iff ``block(k) <= block(q)``;
* a noisy query sees a clean key iff ``block(k) < block(q)`` and a noisy key iff ``block(k) == block(q)``;
* nobody sees padding, and a padding query sees only itself (a row with no visible key would give NaN).

At inference the cached context and the block being stored are the clean stream and the block being denoised
is the noisy stream, so the same function builds the mask of the fused "store block k + denoise block k+1"
forward. In training the sequence ``[prompt ; x0 ; x_t]`` is laid out with the noisy copy ``x_t`` reusing the
position ids of its clean twin.
"""

from __future__ import annotations

import torch

CLEAN = 0
NOISY = 1

__all__ = [
    "CLEAN",
    "NOISY",
    "block_ids",
    "layout_attention_mask",
    "layout_block_mask",
    "to_additive_mask",
]


def block_ids(position_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block id of every token: ``block_i = floor(position_i / block_size)``.

    Args:
        position_ids: integer tensor of absolute positions (0 at the first real token of a sequence).
        block_size: tokens per block ``B``.

    Returns:
        A tensor of the same shape with ``position_ids // block_size``.
    """
    return torch.div(position_ids, block_size, rounding_mode="floor")


def layout_attention_mask(
    query_block: torch.Tensor,
    query_stream: torch.Tensor,
    key_block: torch.Tensor,
    key_stream: torch.Tensor,
    key_valid: torch.Tensor,
    query_valid: torch.Tensor | None = None,
    query_offset: int | None = None,
) -> torch.Tensor:
    """Boolean attention mask of the block-diffusion layout, shape ``[batch, 1, Q, K]`` (``True`` = attend).

    ``M[q, k] = valid(k) ∧ ( [clean(q) ∧ clean(k) ∧ b(k) ≤ b(q)]
                          ∨ [noisy(q) ∧ clean(k) ∧ b(k) < b(q)]
                          ∨ [noisy(q) ∧ noisy(k) ∧ b(k) = b(q)] )``,
    and a padding query (``query_valid`` false) sees exactly its own key, so no row is empty.

    Args:
        query_block: ``[batch, Q]`` block ids of the queries.
        query_stream: ``[batch, Q]`` :data:`CLEAN` / :data:`NOISY` flags of the queries.
        key_block: ``[batch, K]`` block ids of the keys.
        key_stream: ``[batch, K]`` stream flags of the keys.
        key_valid: ``[batch, K]`` ``False`` at padding keys.
        query_valid: ``[batch, Q]`` ``False`` at padding queries; defaults to all valid.
        query_offset: index of the first query among the keys (queries are keys ``offset .. offset + Q - 1``,
            as when new tokens are appended to a cache). Defaults to ``K - Q``.

    Returns:
        A ``torch.bool`` tensor ``[batch, 1, Q, K]``.
    """
    qb = query_block[:, :, None]
    kb = key_block[:, None, :]
    q_noisy = (query_stream == NOISY)[:, :, None]
    k_noisy = (key_stream == NOISY)[:, None, :]
    clean_rule = ~q_noisy & ~k_noisy & (kb <= qb)
    noisy_rule = q_noisy & ((~k_noisy & (kb < qb)) | (k_noisy & (kb == qb)))
    mask = (clean_rule | noisy_rule) & key_valid[:, None, :]
    if query_valid is not None:
        num_queries, num_keys = query_block.shape[1], key_block.shape[1]
        offset = num_keys - num_queries if query_offset is None else query_offset
        own_key = torch.arange(num_keys, device=mask.device)[None, :] == (
            torch.arange(num_queries, device=mask.device)[:, None] + offset
        )
        padded_query = ~query_valid[:, :, None]
        mask = torch.where(padded_query, own_key[None], mask)
    return mask[:, None]


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean mask into the additive form eager attention adds to its scores.

    ``A[q, k] = 0`` where ``M[q, k]`` is true and ``finfo(dtype).min`` elsewhere.
    """
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


#: boolean mask elements built at once by :func:`layout_block_mask` (a band of query rows against every key)
BLOCK_MASK_CHUNK_ELEMENTS = 1 << 24


def layout_block_mask(block: torch.Tensor, stream: torch.Tensor, valid: torch.Tensor, tile_size: int = 128):
    """The rule of :func:`layout_attention_mask` (queries = keys) as a flex-attention ``BlockMask``.

    Builds the same pattern without materialising ``[batch, N, N]``: the mask is evaluated one band of query tiles
    at a time (at most :data:`BLOCK_MASK_CHUNK_ELEMENTS` booleans) and reduced to which ``tile_size`` × ``tile_size``
    tiles are empty, partial or full; the kernel evaluates the rule element by element (``mask_mod``, from the three
    per-token vectors) only inside partial tiles. ``torch``'s ``create_block_mask`` would first build the whole
    ``[batch, 1, N, N]`` mask (and its ``N²`` integer temporaries). Use it when the model runs with
    ``attn_implementation="flex_attention"``; it is what :class:`~t3d_trl.T3DTrainer` passes such a model.

    Args:
        block: ``[batch, N]`` block ids.
        stream: ``[batch, N]`` :data:`CLEAN` / :data:`NOISY` flags.
        valid: ``[batch, N]`` ``False`` at padding.
        tile_size: the flex-attention tile (its default sparse block size, 128).

    Returns:
        A ``torch.nn.attention.flex_attention.BlockMask`` on ``block.device``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    noisy = stream == NOISY

    def mask_mod(b, h, q_idx, kv_idx):
        qb, kb = block[b, q_idx], block[b, kv_idx]
        qn, kn = noisy[b, q_idx], noisy[b, kv_idx]
        clean_rule = ~qn & ~kn & (kb <= qb)
        noisy_rule = qn & ((~kn & (kb < qb)) | (kn & (kb == qb)))
        keep = (clean_rule | noisy_rule) & valid[b, kv_idx]
        return torch.where(valid[b, q_idx], keep, q_idx == kv_idx)

    batch, length = block.shape
    num_tiles = -(-length // tile_size)
    padded = num_tiles * tile_size
    rows = tile_size * max(1, BLOCK_MASK_CHUNK_ELEMENTS // (batch * padded * tile_size))
    partial, full = [], []
    for start in range(0, length, rows):
        stop = min(start + rows, length)
        band = torch.zeros(
            batch, -(-(stop - start) // tile_size) * tile_size, padded, dtype=torch.bool, device=block.device
        )
        band[:, : stop - start, :length] = layout_attention_mask(
            block[:, start:stop],
            stream[:, start:stop],
            block,
            stream,
            valid,
            query_valid=valid[:, start:stop],
            query_offset=start,
        )[:, 0]
        tiles = band.view(batch, -1, tile_size, num_tiles, tile_size)
        any_kept, all_kept = tiles.any(dim=4).any(dim=2), tiles.all(dim=4).all(dim=2)
        partial.append(any_kept & ~all_kept)
        full.append(all_kept)

    def sparse(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = torch.cat(tiles, dim=1)[:, None]  # [batch, 1, query tiles, key tiles]
        order = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True)
        return tiles.sum(dim=-1, dtype=torch.int32), order.to(torch.int32)

    kv_num_blocks, kv_indices = sparse(partial)
    full_kv_num_blocks, full_kv_indices = sparse(full)
    return BlockMask.from_kv_blocks(
        kv_num_blocks,
        kv_indices,
        full_kv_num_blocks,
        full_kv_indices,
        BLOCK_SIZE=tile_size,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )
