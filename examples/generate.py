"""Few-step block diffusion decoding with t3d-trl.

Without arguments the example builds a tiny Qwen3 model (random weights) and a character tokenizer from configs,
so it runs anywhere in seconds and downloads nothing; its completions are gibberish, but the decoding mechanics are
the real ones. It patches the model with :func:`t3d_trl.patch_model` and decodes a batch of prompts of different
lengths at 4, 2 and 1 denoising steps per block (block size 4), printing for every prompt the completion, the step
at which each token was committed (``step_map``) and the forward passes spent (``nfe``).

    python examples/generate.py

With ``--model_name_or_path`` the same decoding runs on a real block diffusion checkpoint, e.g. SDAR (loaded
natively as Qwen3 by t3d-trl, no remote code needed) or a T3D-distilled model:

    python examples/generate.py --model_name_or_path JetLM/SDAR-1.7B-Chat --dtype bfloat16 --device cuda \
        --max_new_tokens 256
    python examples/generate.py --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --trust_remote_code \
        --dtype bfloat16 --device cuda   # a bidirectional mask predictor
"""

from __future__ import annotations

import argparse

import torch
from transformers import Qwen3ForCausalLM

from t3d_trl import patch_model
from t3d_trl.testing import PRINTABLE_ASCII, tiny_qwen3, tiny_tokenizer

DEFAULT_PROMPTS = ["What is 2+3?", "Name a color.", "Count to five:"]


def tiny_model(vocab_size: int) -> Qwen3ForCausalLM:
    """A 2-layer Qwen3 with random weights, run with the ``sdpa`` kernel (which takes 4D block-causal masks)."""
    return tiny_qwen3(
        seed=0,
        dtype=torch.float32,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        head_dim=16,
        max_position_embeddings=512,
    )


def load_pretrained(args):
    """Load a real checkpoint and its tokenizer from the Hugging Face Hub or a local folder."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    model_class = AutoModelForMaskedLM if args.masked_lm else AutoModelForCausalLM
    kwargs = {"dtype": getattr(torch, args.dtype), "trust_remote_code": args.trust_remote_code}
    if not args.masked_lm:
        kwargs["attn_implementation"] = "sdpa"  # a kernel that takes the 4D block-causal mask
    try:
        model = model_class.from_pretrained(args.model_name_or_path, **kwargs)
    except (TypeError, ValueError):
        # some remote-code models reject attn_implementation: fall back to the checkpoint's own default
        kwargs.pop("attn_implementation", None)
        model = model_class.from_pretrained(args.model_name_or_path, **kwargs)
    return model.to(args.device).eval(), tokenizer


def show(tokenizer, prompts, out, prompt_width, steps):
    """Print every row's completion, its step map and its forward count."""
    mask_id = tokenizer.mask_token_id
    for row, prompt in enumerate(prompts):
        generated = out.sequences[row, prompt_width:].tolist()
        step_map = out.step_map[row].tolist()
        kept = [(token, step) for token, step in zip(generated, step_map) if step >= 0]  # drop padding after EOS
        text = tokenizer.decode([token for token, _ in kept], skip_special_tokens=False)
        print(f"  [{row}] prompt     {prompt!r}")
        print(f"      completion {text!r}")
        print(f"      step_map   {[step for _, step in kept]}")
        print(
            f"      nfe        {int(out.nfe[row])} forwards for {len(kept)} tokens "
            f"({len(kept) / max(1, int(out.nfe[row])):.2f} tokens per forward)"
        )
    if out.trajectory is not None and steps == 1:
        first = out.trajectory[0, 0].tolist()
        shown = "".join("_" if t == mask_id else tokenizer.decode([t]) for t in first[:24])
        print(f"  trajectory[0] of row 0 (first 24 tokens, '_' = still masked): {shown!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None, help="a checkpoint (default: a tiny random model)")
    parser.add_argument("--trust_remote_code", action="store_true", help="load the checkpoint's own modelling code")
    parser.add_argument("--masked_lm", action="store_true", help="load with AutoModelForMaskedLM (bidirectional)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt", action="append", dest="prompts", help="a prompt (repeatable)")
    parser.add_argument("--block_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[4, 2, 1],
        help="steps per block to compare (default 4,2,1)",
    )
    parser.add_argument("--remasking", default="low_confidence_static")
    args = parser.parse_args()
    prompts = args.prompts or DEFAULT_PROMPTS

    if args.model_name_or_path is None:
        tokenizer = tiny_tokenizer(characters=PRINTABLE_ASCII)  # pad, EOS, mask, BOS and a chat template
        model = tiny_model(len(tokenizer)).to(args.device)
        print(
            f"tiny Qwen3 (random weights, {sum(p.numel() for p in model.parameters()):,} parameters) and a "
            f"character tokenizer, built from configs"
        )
    else:
        model, tokenizer = load_pretrained(args)
        print(f"loaded {args.model_name_or_path} ({type(model).__name__})")

    # mask / EOS / pad ids come from the tokenizer; block size and budget become the model's generation defaults
    patch_model(
        model, tokenizer, block_size=args.block_size, max_new_tokens=args.max_new_tokens, remasking=args.remasking
    )
    config = model.generation_config
    print(
        f"family: {model.diffusion_family.name}, mask token id {config.mask_token_id}, "
        f"eos {config.eos_token_id}, block size {config.block_size}, remasking {config.remasking}\n"
    )

    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        if tokenizer.chat_template
        else p
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    width = batch["input_ids"].shape[1]
    for steps in args.steps:
        out = model.generate(
            **batch, steps_per_block=steps, return_dict_in_generate=True, output_trajectory=(steps == 1)
        )
        per_step = args.block_size / steps
        print(f"steps_per_block={steps} ({per_step:g} token{'' if per_step == 1 else 's'} per step)")
        show(tokenizer, prompts, out, width, steps)
        print()


if __name__ == "__main__":
    main()
