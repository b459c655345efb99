"""``examples/sdar.py``: its tiny offline default under two CPU processes, and the accelerate configs it documents."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from t3d_trl.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sdar.py"
ACCELERATE_CONFIGS = ROOT / "examples" / "accelerate_configs"


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.num_machines == 1 and config.num_processes == 8 and config.mixed_precision == "bf16"
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert str(config.distributed_type).split(".")[-1] == expected
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if expected == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def test_docstring_recipe_parses():
    """The official recipe of the module docstring is a valid command line for the script's parser."""
    module = runpy.run_path(str(EXAMPLE), run_name="sdar_example")
    docstring = module["__doc__"]
    command = docstring.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command)
    argv = argv[argv.index(str(Path("examples") / "sdar.py")) + 1 :]
    argv += ["--use_cpu", "--bf16", "false"]  # parse on a CPU machine
    script_args, model_args, _, training_args = module["make_parser"]().parse_args_and_config(argv)
    assert model_args.model_name_or_path == "JetLM/SDAR-4B-Chat" and script_args.prompt_template == "math"
    assert (script_args.rollout_block_size, script_args.rollout_steps_per_block) == (4, 4)
    assert script_args.rollout_temperature == 0.1 and script_args.rollout_max_new_tokens == 2000
    assert training_args.block_size == 8 and training_args.learning_rate == 1e-5
    assert training_args.gradient_accumulation_steps == 32 and training_args.num_train_epochs == 30
    assert training_args.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and training_args.warmup_steps == 20
    assert training_args.loss_type == ["ddo", "path"] and training_args.beta == 0.1


def test_recipe_paper_parses_to_the_official_settings():
    """`--recipe paper` reads t3d_trl/configs/sdar_t3d_paper.yaml: the official code's settings, flags still override."""
    module = runpy.run_path(str(EXAMPLE), run_name="sdar_example")
    argv = module["with_recipe"](
        ["--recipe", "paper", "--use_cpu", "--bf16", "false", "--tf32", "false", "--seed", "3"]
    )
    script_args, model_args, _, training_args = module["make_parser"]().parse_args_and_config(argv)
    assert model_args.model_name_or_path == "JetLM/SDAR-4B-Chat"
    assert (script_args.rollout_block_size, script_args.rollout_steps_per_block) == (4, 4)
    assert script_args.rollout_temperature == 0.1 and script_args.rollout_max_new_tokens == 2000
    assert training_args.random_token_ratio == 0.1 and training_args.block_alignment == "response"
    assert training_args.state_order == "earliest" and training_args.block_size == 8
    assert training_args.loss_type == ["ddo", "path"] and training_args.ref_model_sync_steps == 10
    assert training_args.seed == 3  # a flag after the recipe wins
    with pytest.raises(SystemExit, match="--recipe must be one of"):
        module["with_recipe"](["--recipe", "blog"])
    with pytest.raises(SystemExit, match="cannot be combined"):
        module["with_recipe"](["--recipe", "paper", "--config", "x.yaml"])


@pytest.mark.slow
def test_tiny_default_under_two_cpu_processes(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with no visible GPU starts two gloo processes (accelerate's
    `--cpu` would start one without MPI); the tiny default trains its teacher, rolls it out and trains T3D."""
    output_dir = tmp_path / "tiny-t3d"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(EXAMPLE),
        "--use_cpu", "--output_dir", str(output_dir), "--tiny_teacher_steps", "10", "--max_samples", "12",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false",  # and this checkout's t3d_trl, whatever is installed
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    # each INFO line once: the second process logs only its warnings and errors
    prepared = [line for line in completed.stderr.splitlines() if "Prepared train trajectories: 12 rows in" in line]
    assert len(prepared) == 1, completed.stderr[-5000:]

    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
                 "custom_generate/generate.py"):  # fmt: skip
        assert (output_dir / name).exists(), name
    assert (output_dir / "teacher" / "model.safetensors").exists() and (output_dir / "prompts.jsonl").exists()
    trajectories = load_from_disk(str(output_dir / "trajectories"))
    assert len(trajectories) == 12 and set(trajectories["block_size"]) == {4}
    assert "T3D" in (output_dir / "README.md").read_text()  # the model card
    generation = json.loads((output_dir / "generation_config.json").read_text())["block_diffusion"]
    assert generation["block_size"] == 4 and generation["mask_token_id"] is not None

    # the student decodes in one step per block, from its own saved settings
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t3d_trl import patch_model

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = patch_model(AutoModelForCausalLM.from_pretrained(output_dir), tokenizer).eval()
    assert model.generation_config.block_size == 4
    inputs = tokenizer([trajectories[0]["prompt"]], return_tensors="pt")
    out = model.generate(**inputs, steps_per_block=1, max_new_tokens=8, return_dict_in_generate=True)
    assert out.sequences.shape[1] > inputs["input_ids"].shape[1]
    assert 1 <= int(out.nfe.min()) and int(out.nfe.max()) <= 3  # 8 new tokens = 2 blocks of 1 step (+ a store pass)
