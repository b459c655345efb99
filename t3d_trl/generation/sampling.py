"""Per-position sampling of a denoising step: a token, its probability and the predictive entropy."""

from __future__ import annotations

import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    suppress_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token at every position of ``logits`` ``[..., V]``.

    The logit of ``suppress_token_id`` (the mask token) is set to ``−∞`` first, so it is never drawn. Then:

    * greedy (``T = 0``): ``p = softmax(logits)``, unfiltered: ``top_k`` / ``top_p`` only shape sampling, as in
      transformers, so a checkpoint's sampling settings never change which slots greedy decoding commits;
    * sampling (``T > 0``): ``p = softmax(filter(logits / T))`` with ``filter`` = top-k then top-p (transformers'
      logits warpers);

    and ``x_i = argmax p_i`` (greedy) or ``x_i ~ Cat(p_i)``, confidence ``c_i = p_i(x_i)``, entropy
    ``H_i = -Σ_v p_i(v) log p_i(v)``.

    Returns:
        ``(tokens, confidence, entropy)`` with the leading shape of ``logits``.
    """
    shape = logits.shape[:-1]
    scores = logits.reshape(-1, logits.shape[-1]).float()
    if suppress_token_id is not None and 0 <= suppress_token_id < scores.shape[-1]:
        suppressed = torch.tensor([suppress_token_id], device=scores.device)
        scores = scores.index_fill(-1, suppressed, float("-inf"))  # a copy: the model's logits stay as they are
    if temperature > 0:
        scores = scores / temperature
        if top_k is not None and top_k > 0:
            scores = TopKLogitsWarper(top_k=top_k)(None, scores)
        if top_p is not None and top_p < 1.0:
            scores = TopPLogitsWarper(top_p=top_p)(None, scores)
    log_probs = torch.log_softmax(scores, dim=-1)
    probs = log_probs.exp()
    if temperature > 0:
        tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    else:
        tokens = probs.argmax(dim=-1)
    confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = -(probs * log_probs.nan_to_num(neginf=0.0)).sum(-1)
    return tokens.view(shape), confidence.view(shape), entropy.view(shape)
