"""The round trip the mission promises: T3DTrainer(...).train(), save (as push_to_hub uploads the folder), then
model.generate(steps_per_block=1) on the loaded checkpoint: few-step decoding with t3d-trl imported (the AutoModel*
load hook), and in a fresh process where t3d-trl cannot be imported (the checkpoint's custom_generate code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

import t3d_trl
from t3d_trl import T3DTrainer, patch_model
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer

PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh"]

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["t3d_trl"] = None  # `import t3d_trl` now fails: t3d-trl is not available here
    try:
        import t3d_trl  # noqa: F401
        raise SystemExit("t3d_trl could be imported")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, prompts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, steps_per_block=1, max_new_tokens=8, trust_remote_code=True,
                         return_dict_in_generate=True)
    print(json.dumps({"sequences": out.sequences.tolist(), "nfe": out.nfe.tolist()}))
    """
)


def test_train_save_and_decode_in_few_steps_with_and_without_t3d_trl(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, PROMPTS))
    output = tmp_path / "student"
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(output, max_steps=2),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    assert (output / "custom_generate" / "generate.py").is_file()

    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = patch_model(trainer.model.float().eval(), tokenizer).generate(
        **batch, steps_per_block=1, max_new_tokens=8, return_dict_in_generate=True
    )

    # t3d-trl imported: an AutoModel load gets the few-step generate (not transformers' autoregressive one)
    loaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    assert isinstance(loaded, t3d_trl.FewStepDiffusionGenerationMixin)
    out = loaded.generate(**batch, steps_per_block=1, max_new_tokens=8, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.nfe, expected.nfe)

    # a fresh process where t3d-trl cannot be imported: trust_remote_code runs custom_generate/generate.py
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(output), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sequences"] == expected.sequences.tolist()
    assert result["nfe"] == expected.nfe.tolist()  # few forwards: one per block at steps_per_block=1

    # the card shows both ways, names the base model and the teacher's decoding
    card = (output / "README.md").read_text()
    assert "import t3d_trl" in card and "trust_remote_code=True" in card and "steps_per_block=" in card
    assert "pipeline(" not in card and "fine-tuned version of None" not in card
    assert "Teacher's decoding of the trajectories" in card
