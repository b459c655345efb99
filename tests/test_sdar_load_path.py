"""Released SDAR checkpoints load with t3d-trl imported, as docs/generation.md shows, and never ask on stdin.

Every released SDAR checkpoint has an ``auto_map`` to its remote code in ``config.json`` (and ``tokenizer_config.json``);
that code needs flash-attn and transformers 4, so here it is not importable at all. Each case runs in a fresh Python
process (the SDAR mapping is registered once per process, so an earlier test could hide a regression) with stdin
closed and ``input`` replaced by a function that fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t3d_trl.testing import PRINTABLE_ASCII, tiny_qwen3, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
#: prepended to every script: transformers' y/N question on stdin becomes a failure
_NO_PROMPT = textwrap.dedent("""\
    import builtins

    def _asked(*args, **kwargs):
        raise AssertionError(f"transformers asked on stdin: {args[0] if args else ''}")

    builtins.input = _asked
""")


def _write_released_sdar_checkpoint(path: Path) -> None:
    """A checkpoint laid out like the released ones: Qwen3 weights under ``model_type: sdar``, SDAR-4B-Chat's extra
    config fields, ``auto_map`` entries to remote code that cannot be imported, and a tokenizer whose config also
    maps to remote code."""
    tokenizer = tiny_tokenizer(PRINTABLE_ASCII)
    tiny_qwen3(vocab_size=len(tokenizer), max_position_embeddings=1024).save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(
        model_type="sdar",
        architectures=["SDARForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        block_size=4,
        mask_token_id=tokenizer.mask_token_id,
        fuse_cross_entropy=True,
    )
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_sdar.SDARTokenizer", None]}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for name in ("configuration_sdar.py", "modeling_sdar.py", "tokenization_sdar.py"):
        (path / name).write_text("import flash_attn  # noqa: F401  (as SDAR's own code: not importable here)\n")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("T3D_TRL_NO_AUTO_PATCH", None)
    return subprocess.run(
        [sys.executable, "-c", _NO_PROMPT + code],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sdar-released")
    _write_released_sdar_checkpoint(path)
    return path


def test_released_sdar_checkpoint_loads_natively_without_trust_remote_code(checkpoint):
    code = f"""
import t3d_trl
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained({str(checkpoint)!r})
tokenizer = AutoTokenizer.from_pretrained({str(checkpoint)!r})
model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r})
print("LOADED", type(config).__name__, type(model).__name__, type(model).__mro__[1].__name__, tokenizer.mask_token)
"""
    result = _run(code, checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED SDARConfig SDARForCausalLM Qwen3ForCausalLM <mask>" in result.stdout


def test_released_sdar_checkpoint_with_trust_remote_code_says_to_load_without_it(checkpoint):
    code = f"""
import t3d_trl
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
except ImportError as error:
    print("REFUSED", error)
"""
    result = _run(code, checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.split("REFUSED", 1)[1]
    assert "flash_attn" in message and "without `trust_remote_code=True`" in message
    assert str(checkpoint) in message


def test_the_first_example_of_docs_generation_md_runs_as_written(checkpoint):
    """The page's first code block, with the Hub id replaced by the local checkpoint and the GPU by the CPU."""
    text = (ROOT / "docs" / "generation.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert '"JetLM/SDAR-1.7B-Chat"' in code and 'to("cuda")' in code
    code = code.replace('"JetLM/SDAR-1.7B-Chat"', repr(str(checkpoint))).replace('to("cuda")', 'to("cpu")')
    result = _run(code + '\nprint("RAN", type(model).__name__, out.nfe.tolist())\n', checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RAN SDARForCausalLM" in result.stdout
