"""The ``t3d-trl`` command line: help, YAML + flag parsing, and a tiny rollout -> train -> eval chain."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from t3d_trl.cli import main, parse_command
from t3d_trl.evaluation import EvalResult, read_json
from t3d_trl.scripts import EvalArguments, load_local_dataset
from t3d_trl.scripts.demo import demo_config_from_args
from t3d_trl.scripts.evaluate import average_results, decoding_settings, load_eval_sets, resolve_scorer
from t3d_trl.scripts.utils import DEEPSPEED_LOGGER, cli_output, format_prompts, resolve_prompt_template

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "t3d_trl" / "configs"
CONFIG_ROLLOUT = CONFIGS / "rollout.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )  # fmt: skip
    return env


def _run(args: list[str], cwd: Path, timeout: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "t3d_trl.cli", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check:
        assert completed.returncode == 0, f"{args}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return completed


# --------------------------------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------------------------------


def test_help_runs_as_a_program():
    """`t3d-trl train --help` as a program: the console script (or `python -m t3d_trl.cli` without it)."""
    script = shutil.which("t3d-trl")
    command = [script] if script else [sys.executable, "-m", "t3d_trl.cli"]
    completed = subprocess.run([*command, "train", "--help"], env=_env(), capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for flag in ("--loss_type", "--beta", "--mask_ratio_power", "--model_name_or_path", "--dataset_path",
                 "--use_peft", "--learning_rate"):  # fmt: skip
        assert flag in completed.stdout, flag
    assert "usage: t3d-trl train" in completed.stdout and "examples:" in completed.stdout


@pytest.mark.parametrize(
    "command, flags",
    [
        ("rollout", ["--block_size", "--steps_per_block", "--temperature", "--output_dir", "--prompt_template"]),
        ("train", ["--loss_type", "--ref_model_sync_steps", "--lora_r"]),
        ("eval", ["--eval_dataset", "--block_sizes", "--tokens_per_step", "--scorer", "--allow_code_execution"]),
        ("demo", ["--seeds", "--student_steps", "--print_config"]),
    ],
)
def test_subcommand_help(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: t3d-trl {command}")
    for flag in flags:
        assert flag in text, flag


def test_top_level_help_and_errors(capsys):
    assert main([]) == 0
    assert "rollout" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert main(["distill"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("t3d-trl: error: argument") and "invalid choice: 'distill'" in line


# --------------------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2 (command line, --config) or 1 (found while running), --debug for the traceback
# --------------------------------------------------------------------------------------------------------------------


def _one_error_line(stderr: str, program: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{program}: error: "), lines[0]
    return lines[0][len(f"{program}: error: ") :]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rollout", "--no_such_flag", "1"], r"unrecognized arguments: --no_such_flag 1 \(`t3d-trl rollout --help`"),
        (["rollout", "--batch_size", "x"], r"argument --batch_size\S*: invalid int value: 'x'"),
        (["eval", "--remasking"], r"argument --remasking\S*: expected one argument"),
        (
            ["rollout", "--config", "CONFIG/missing.yaml"],
            r"--config .*missing.yaml: no such file, and no bundled config",
        ),
        (["rollout", "--config"], r"--config needs a YAML file or a bundled config's name \(demo, eval, rollout"),
        (["rollout", "--config", "CONFIG/bad.yaml"], r"--config .*bad.yaml is not valid YAML: "),
        (["rollout", "--config", "CONFIG/list.yaml"], r"must contain a YAML mapping"),
        (
            ["rollout", "--config=CONFIG/unknown.yaml"],
            r"--config .*unknown.yaml: not_a_flag, other are not flags of "
            r"`t3d-trl rollout`",
        ),
        (["train", "--loss_type", "nope", "--output_dir", "CONFIG/out"], r"nope"),
        (["demo", "--seeds", "x", "--debug"], r"argument --seeds\S*: invalid int value: 'x'"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad.yaml").write_text("model_name_or_path: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "unknown.yaml").write_text("model_name_or_path: m\nnot_a_flag: 1\nother: 2\n")
    argv = [arg.replace("CONFIG", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    if "--debug" in argv:
        assert "Traceback (most recent call last)" in err
        err = err.splitlines()[-1]
    assert re.search(message, _one_error_line(err, f"t3d-trl {argv[0]}")), err
    assert "usage:" not in err


def test_a_config_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("learning_rate: 1e-5\nmax_steps: 3\nlearning_rate: 2e-5\n")
    assert main(["train", "--config", str(config), "--output_dir", str(tmp_path / "out")]) == 2
    message = _one_error_line(capsys.readouterr().err, "t3d-trl train")
    assert message.startswith(f"--config {config}: `learning_rate` is given twice (lines 1 and 3); keep one")
    nested = tmp_path / "nested.yaml"
    nested.write_text("env:\n  A: 1\n  A: 2\n")
    assert main(["rollout", "--config", str(nested)]) == 2
    assert "`A` is given twice (lines 2 and 3)" in capsys.readouterr().err


def test_yaml_boolean_words_read_as_the_flags_type(tmp_path, monkeypatch):
    """YAML 1.1 reads `no`, `yes`, `on`, `off` as booleans: `save_strategy: no` means the strategy "no" (it was the
    boolean False, refused as "False is not a valid SaveStrategy"); a boolean flag still reads them as booleans."""
    monkeypatch.delenv("T3D_TEST_WORD", raising=False)
    config = tmp_path / "words.yaml"
    config.write_text(
        "save_strategy: no\neval_strategy: 'no'\nbf16: no\nuse_cpu: yes\nhub_strategy: end\nenv:\n  T3D_TEST_WORD: on\n"
    )
    *_, args = parse_command("train", ["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert args.save_strategy == "no" and args.eval_strategy == "no"
    assert args.bf16 is False and args.use_cpu is True
    assert os.environ["T3D_TEST_WORD"] == "True"  # env values are YAML's, as TRL reads them


def test_demo_print_config_refuses_an_unknown_method(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    assert main(["demo", "--methods", "NOPE", "--output_dir", str(output_dir), "--print_config"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed as if it were a valid configuration
    message = _one_error_line(captured.err, "t3d-trl demo")
    assert message.startswith("Unknown method(s) ['NOPE']; choose from ['SFT', ")
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rollout", "--dataset_path", "x.jsonl"], r"No model: pass --model_name_or_path"),
        # checked before the model (which does not exist) is loaded
        (["rollout", "--model_name_or_path", "OUT", "--batch_size", "0"], r"`batch_size` must be a positive integer"),
        (
            ["rollout", "--model_name_or_path", "OUT", "--num_generations", "2", "--temperature", "0"],
            r"--num_generations 2 needs sampling, but --temperature is 0",
        ),
        (["rollout", "--model_name_or_path", "OUT", "--output_dir", "BAD"], r"`output_dir` .* is a file"),
        (["eval", "--eval_dataset", "BAD"], r"a custom evaluation set needs `prompt` and `reference` columns"),
        (["eval", "--block_sizes", "4", "0"], r"--block_sizes takes positive integers, got \[4, 0\]"),
        (["eval", "--batch_size", "0"], r"--batch_size must be a positive integer, got 0"),
        (["eval", "--eval_limit", "0"], r"--eval_limit must be a positive integer"),
        (["eval", "--temperature", "-1"], r"--temperature must be >= 0"),
        (["eval", "--scorer_modules", "no_such_module_t3d"], r"--scorer_modules 'no_such_module_t3d' cannot be"),
        (["demo", "--tasks", "nope", "--output_dir", "OUT"], r"Unknown demo task\(s\) \['nope'\]"),
    ],
)
def test_errors_found_while_running_are_one_line_with_status_1(tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    argv = [arg.replace("BAD", str(tmp_path / "bad.jsonl")).replace("OUT", str(tmp_path / "out")) for arg in argv]
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err, f"t3d-trl {argv[0]}")
    assert re.search(message, line) and line.endswith("(--debug shows the traceback)")
    assert main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and re.search(message, err.splitlines()[-1])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_refused_before_anything_is_loaded(tmp_path, capsys, monkeypatch):
    from t3d_trl.scripts import evaluate

    monkeypatch.setattr(evaluate, "load_eval_sets", lambda *args: pytest.fail("the evaluation sets were loaded"))
    assert main(["eval", "--model_name_or_path", str(tmp_path / "m"), "--device", "cuda"]) == 1
    line = _one_error_line(capsys.readouterr().err, "t3d-trl eval")
    assert line.startswith("--device='cuda': this machine has no cuda device (torch.cuda.is_available() is False")
    assert "Use cpu, or leave the setting unset" in line
    assert main(["eval", "--model_name_or_path", str(tmp_path / "m"), "--device", "gpu0"]) == 1
    assert "--device='gpu0' is not a device" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["does not exist", "is a file"])
def test_a_model_path_that_is_no_model_is_named_by_the_commands(tmp_path, capsys, where):
    path = tmp_path / "no" / "such" / "dir"
    if where == "is a file":
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"x")
    assert main(["rollout", "--model_name_or_path", str(path), "--dataset_path", str(tmp_path / "d.jsonl")]) == 1
    line = _one_error_line(capsys.readouterr().err, "t3d-trl rollout")
    assert line.startswith(f"--model_name_or_path='{path}' {where}") and "give a directory holding a saved" in line


def test_a_type_error_from_a_bug_prints_its_traceback(monkeypatch, capsys):
    """A `TypeError` from an operation or a call inside the code is a bug: its traceback is printed (it was reported
    as a one-line user error)."""
    from t3d_trl.scripts import demo

    def buggy(*args):
        return len(5)  # a bug, not a user's mistake

    monkeypatch.setattr(demo, "main", buggy)
    with pytest.raises(TypeError, match="has no len"):
        main(["demo", "--seeds", "0"])


def test_a_type_error_t3d_trl_raises_about_an_argument_is_one_line(monkeypatch, capsys):
    from t3d_trl.data import prepare_trajectory_dataset
    from t3d_trl.scripts import demo

    monkeypatch.setattr(demo, "main", lambda *args: prepare_trajectory_dataset(5))
    assert main(["demo", "--seeds", "0"]) == 1
    line = _one_error_line(capsys.readouterr().err, "t3d-trl demo")
    assert line.startswith("The trajectory dataset must be a datasets.Dataset or a list of dicts, got int.")


def test_an_interrupted_rollout_says_how_to_resume(monkeypatch, capsys):
    from t3d_trl.scripts import rollout

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollout, "main", interrupted)
    assert main(["rollout", "--batch_size", "2"]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("t3d-trl rollout: interrupted") and "rerun the same command to resume" in line


def test_train_keeps_its_own_debug_option():
    """`--debug <option>` is TrainingArguments.debug; a bare `--debug` is t3d-trl's."""
    *_, training_args = parse_command("train", ["--debug", "underflow_overflow", "--output_dir", "x"])
    assert [str(option.value) for option in training_args.debug] == ["underflow_overflow"]
    *_, training_args = parse_command("train", ["--output_dir", "x", "--debug"])
    assert not training_args.debug


def test_errors_as_programs(tmp_path):
    """`python -m t3d_trl.cli` and `python -m t3d_trl.scripts.<name>`: exit status and stderr of this checkout's code."""
    usage = _run(["rollout", "--batch_size", "x"], tmp_path, check=False)
    assert usage.returncode == 2
    assert "invalid int value: 'x'" in _one_error_line(usage.stderr, "t3d-trl rollout")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    script = [sys.executable, "-m", "t3d_trl.scripts.evaluate", "--eval_dataset", str(bad)]
    for debug in ([], ["--debug"]):
        completed = subprocess.run(
            [*script, *debug], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240
        )
        assert completed.returncode == 1, completed.stderr
        assert ("Traceback (most recent call last)" in completed.stderr) == bool(debug)
        last = completed.stderr.splitlines()[-1] if debug else _one_error_line(completed.stderr, "t3d-trl eval")
        assert "`prompt` and `reference` columns" in last


# --------------------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------------------


def test_bundled_configs_are_reachable_by_name_from_the_package():
    from t3d_trl.scripts.utils import BUNDLED_CONFIGS, resolve_config

    assert BUNDLED_CONFIGS.parent.name == "t3d_trl"  # inside the package: an installed wheel has them
    assert resolve_config("train") == str(BUNDLED_CONFIGS / "train.yaml")
    model_args, rollout_args, _ = parse_command("rollout", ["--config", "rollout", "--max_samples", "3"])
    assert rollout_args.max_samples == 3 and model_args.model_name_or_path is not None


def test_yaml_config_with_command_line_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("T3D_CLI_TEST_VARIABLE", "unset")
    config = {
        "env": {"T3D_CLI_TEST_VARIABLE": "from-yaml"},
        "model_name_or_path": "some/model",
        "dataset_path": "rollouts/x",
        "output_dir": str(tmp_path / "out"),
        "loss_type": ["ddo", "path"],
        "mask_ratios": [1.0, 0.5],
        "beta": 0.2,
        "learning_rate": 1.0e-5,
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "lr_scheduler_type": "cosine_with_min_lr",
        "save_strategy": "no",
        "use_cpu": True,
        "use_peft": True,
        "lora_target_modules": ["q_proj", "v_proj"],
        "report_to": "none",
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    script_args, model_args, lora_args, training_args = parse_command(
        "train", ["--config", str(path), "--beta", "0.3", "--loss_type", "td", "--dtype", "float32"]
    )
    assert os.environ["T3D_CLI_TEST_VARIABLE"] == "from-yaml"
    assert script_args.dataset_path == "rollouts/x" and script_args.dataset_split == "train"
    assert model_args.model_name_or_path == "some/model" and model_args.dtype == "float32"
    assert model_args.attn_implementation == "sdpa" and training_args.trust_remote_code is False
    assert lora_args.use_peft and lora_args.lora_target_modules == ["q_proj", "v_proj"]
    assert training_args.beta == 0.3  # the flag wins over the file
    assert training_args.loss_type == ["td"]
    assert training_args.mask_ratios == [1.0, 0.5] and training_args.learning_rate == 1e-5
    assert training_args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert training_args.output_dir == str(tmp_path / "out") and training_args.use_cpu

    rollout = yaml.safe_load((CONFIGS / "rollout.yaml").read_text())
    model_args, rollout_args, generation_args = parse_command(
        "rollout", ["--config", str(CONFIGS / "rollout.yaml"), "--temperature", "0", "--max_samples", "3"]
    )
    assert model_args.model_name_or_path == rollout["model_name_or_path"]
    assert rollout_args.output_dir == rollout["output_dir"] and rollout_args.max_samples == 3
    assert generation_args.to_dict() == {
        "block_size": 4, "steps_per_block": 4, "remasking": "low_confidence_static", "temperature": 0.0,
        "max_new_tokens": 16,
    }  # fmt: skip

    _, eval_args, _ = parse_command("eval", ["--config", str(CONFIGS / "eval.yaml"), "--tokens_per_step", "2"])
    assert eval_args.block_sizes == [4, 8] and eval_args.tokens_per_step == [2]
    assert eval_args.scorer_modules == ["t3d_trl.demo.tasks"] and eval_args.as_chat


def test_unknown_yaml_key_is_refused(tmp_path):
    path = tmp_path / "rollout.yaml"
    path.write_text("model_name_or_path: m\nnot_a_flag: 1\n")
    with pytest.raises(ValueError, match="not_a_flag"):
        parse_command("rollout", ["--config", str(path)])


def test_demo_arguments_override_the_demo_settings(tmp_path, capsys):
    import dataclasses
    import typing

    from t3d_trl.demo import DemoConfig

    (demo_args,) = parse_command("demo", ["--config", str(CONFIGS / "demo.yaml"), "--seeds", "3", "4"])
    config = demo_config_from_args(demo_args)
    assert config.seeds == (3, 4) and isinstance(config.tasks, tuple) and config.output_dir == "t3d-demo"
    (demo_args,) = parse_command("demo", ["--student_steps", "7"])
    config = demo_config_from_args(demo_args)
    assert config.student_steps == 7 and config.seeds == DemoConfig().seeds
    hints = typing.get_type_hints(DemoConfig)  # dict fields take JSON on the command line, mappings in YAML
    for name in [f.name for f in dataclasses.fields(DemoConfig) if typing.get_origin(hints[f.name]) is dict][:1]:
        (demo_args,) = parse_command("demo", [f"--{name}", '{"x": {"beta": 0.2}}'])
        assert getattr(demo_config_from_args(demo_args), name) == {"x": {"beta": 0.2}}
        path = tmp_path / "demo.yaml"
        path.write_text(yaml.safe_dump({name: {"y": {"beta": 0.3}}}))
        (demo_args,) = parse_command("demo", ["--config", str(path)])
        assert getattr(demo_config_from_args(demo_args), name) == {"y": {"beta": 0.3}}
    output_dir = tmp_path / "demo"
    assert main(["demo", "--methods", "T3D", "--output_dir", str(output_dir), "--print_config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["methods"] == ["T3D"] and printed["seeds"] == list(DemoConfig().seeds)
    assert not output_dir.exists()  # --print_config does not run the demo


# --------------------------------------------------------------------------------------------------------------------
# Helpers of the subcommands
# --------------------------------------------------------------------------------------------------------------------


def test_decoding_settings_skip_pairs_that_do_not_divide():
    settings = decoding_settings(EvalArguments(block_sizes=[4, 8], tokens_per_step=[1, 3, 8]))
    assert [(s.block_size, s.steps_per_block) for s in settings] == [(4, 4), (8, 8), (8, 1)]
    dynamic = decoding_settings(EvalArguments(block_sizes=[4], tokens_per_step=[1], remasking="low_confidence_dynamic",
                                              confidence_threshold=0.9))  # fmt: skip
    assert dynamic[0].name == "B4-S4-dynamic0.9"
    with pytest.raises(ValueError, match="No decoding setting"):
        decoding_settings(EvalArguments(block_sizes=[4], tokens_per_step=[3]))


def test_average_results_pool_speed_and_average_accuracy():
    def result(dataset, accuracy, samples, tokens, seconds, nfe):
        return EvalResult(
            setting="B4-S2-static", block_size=4, steps_per_block=2, remasking="low_confidence_static", threshold=None,
            accuracy=accuracy, num_samples=samples, num_correct=round(accuracy * samples), tokens_per_second=0.0,
            latency_per_sample=0.0, avg_nfe=nfe / samples, avg_gen_length=tokens / samples,
            tokens_per_forward=tokens / nfe, dataset=dataset, total_time_s=seconds, total_generated_tokens=tokens,
            total_nfe=nfe,
        )  # fmt: skip

    sets = {"a": [result("a", 0.5, 10, 100, 2.0, 50)], "b": [result("b", 1.0, 30, 500, 3.0, 200)]}
    (average,) = average_results(sets)
    assert average.accuracy == pytest.approx(0.75)  # unweighted over the sets, as the paper's "Average"
    assert average.tokens_per_second == pytest.approx(600 / 5.0)
    assert average.latency_per_sample == pytest.approx(5.0 / 40)
    assert average.avg_nfe == pytest.approx(250 / 40) and average.tokens_per_forward == pytest.approx(600 / 250)
    assert average.dataset == "average" and average.num_correct == 35


def test_eval_sets_registered_and_local(tmp_path):
    custom = tmp_path / "mine.jsonl"
    custom.write_text(json.dumps({"prompt": "w:beast=", "reference": "bear|deer"}) + "\n")
    with pytest.raises(ValueError, match="one file per registered evaluation set"):
        files = [str(FIXTURES / "gsm8k.jsonl")]
        load_eval_sets(EvalArguments(eval_dataset=["gsm8k", "math500"], eval_data_files=files))
    args = EvalArguments(eval_dataset=["gsm8k"], eval_data_files=[str(FIXTURES / "gsm8k.jsonl")], eval_limit=2)
    ((label, dataset),) = load_eval_sets(args)
    assert label == "gsm8k" and len(dataset) == 2 and dataset[0]["scorer"] == "math"
    assert isinstance(dataset[0]["prompt"], list)  # chat messages by default
    ((label, dataset),) = load_eval_sets(EvalArguments(eval_dataset=[str(custom)]))
    assert label == "mine" and dataset[0]["reference"] == "bear|deer"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="prompt` and `reference"):
        load_eval_sets(EvalArguments(eval_dataset=[str(bad)]))


def test_scorer_given_as_an_import_path_is_refused():
    """`--scorer os:system` would call any importable function with model output: only registered names are taken."""
    with pytest.raises(ValueError, match=r"import path; only registered scorers.*--scorer_modules os --scorer system"):
        resolve_scorer("os:system")
    with pytest.raises(ValueError, match="not a registered scorer"):
        resolve_scorer("no_such_scorer")
    assert resolve_scorer("math") == "math" and resolve_scorer(None) is None
    assert main(["eval", "--scorer", "os:system", "--model_name_or_path", "x"]) == 1


def test_eval_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("a file")
    # the model does not exist either: the output directory is refused first, before anything is loaded
    assert main(["eval", "--output_dir", str(taken), "--model_name_or_path", str(tmp_path / "no-model")]) == 1
    assert f"--output_dir '{taken}' is a file" in capsys.readouterr().err


def test_prompt_formatting_and_local_datasets(tmp_path):
    from datasets import Dataset, DatasetDict

    dataset = Dataset.from_dict({"question": ["1+1?"]})
    formatted = format_prompts(dataset, "question", "math", as_chat=True)
    assert formatted[0]["question"] == [
        {"role": "user", "content": "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."}
    ]
    assert format_prompts(dataset, "question", "Q: {prompt} A:")[0]["question"] == "Q: 1+1? A:"
    with pytest.raises(ValueError, match="placeholder"):
        resolve_prompt_template("no placeholder")
    DatasetDict({"train": dataset, "test": dataset.map(lambda r: {"question": "2+2?"})}).save_to_disk(tmp_path / "dd")
    assert load_local_dataset(tmp_path / "dd", "test")[0]["question"] == "2+2?"
    (tmp_path / "rollout" / "dataset").parent.mkdir()
    dataset.save_to_disk(tmp_path / "rollout" / "dataset")
    (tmp_path / "rollout" / "rollout_config.json").write_text("{}")
    with pytest.raises(ValueError, match="unfinished rollout directory"):  # no `done` marker yet
        load_local_dataset(tmp_path / "rollout")
    (tmp_path / "rollout" / "done").write_text(json.dumps({"num_rows": 1, "fingerprint": "f"}))
    assert load_local_dataset(tmp_path / "rollout")[0]["question"] == "1+1?"  # a rollout dir reads its dataset/
    with pytest.raises(ValueError, match="Unsupported"):
        (tmp_path / "x.txt").write_text("")
        load_local_dataset(tmp_path / "x.txt")


# --------------------------------------------------------------------------------------------------------------------
# End to end: rollout -> train -> eval through files, with the shipped example configs
# --------------------------------------------------------------------------------------------------------------------


def _tiny_workspace(root: Path) -> None:
    """What `t3d-trl demo` writes and the bundled configs read, made directly: a tiny Qwen3 teacher with the demo's
    tokenizer (and a chat template) in t3d-demo/seed0/teacher, and demo prompts in t3d-demo/seed0/prompts.jsonl."""
    import torch

    from t3d_trl.testing import task_tokenizer, tiny_prompts, tiny_qwen3

    tokenizer = task_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model = tiny_qwen3(
        seed=0, dtype=torch.float32, vocab_size=len(tokenizer), max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    with torch.no_grad():  # make EOS likely, so completions have different lengths
        model.lm_head.weight[tokenizer.eos_token_id] += 0.5 * model.lm_head.weight.std() * 10
    model.save_pretrained(root / "t3d-demo" / "seed0" / "teacher")
    tokenizer.save_pretrained(root / "t3d-demo" / "seed0" / "teacher")
    tiny_prompts(12, seed=0).to_json(root / "t3d-demo" / "seed0" / "prompts.jsonl")


def _library_output_state() -> tuple:
    import datasets
    import transformers

    return (
        logging.getLogger("t3d_trl").level, logging.getLogger("t3d_trl").handlers[:],
        datasets.utils.logging.get_verbosity(), datasets.utils.are_progress_bars_disabled(),
        transformers.utils.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled(),
    )  # fmt: skip


def test_rollout_shows_its_stage_and_a_summary_only(tmp_path, monkeypatch, capsys):
    """One progress display (the rollout's), a summary; the bars of `datasets` and INFO logs only with --verbose;
    the libraries' settings restored afterwards."""
    _tiny_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _library_output_state()
    capsys.readouterr()  # the set-up's own output (importing a library can print)
    argv = ["rollout", "--config", str(CONFIG_ROLLOUT), "--max_samples", "4", "--batch_size", "2",
            "--num_generations", "2", "--as_chat"]  # fmt: skip
    assert main([*argv, "--output_dir", "quiet"]) == 0
    captured = capsys.readouterr()
    assert "Teacher rollouts" in captured.err  # the stage's own bar
    for noise in ("Formatting prompts", "Saving the dataset", "Map", "INFO"):
        assert noise not in captured.err, noise
    (summary,) = captured.out.splitlines()
    assert re.match(r"Rolled out 4 prompts x 2 samples in [\d.]+ s \(\d+ completion tokens", summary), summary
    assert len(load_from_disk(str(tmp_path / "quiet" / "dataset"))) == 8
    assert _library_output_state() == before

    assert main([*argv, "--output_dir", "verbose", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "Formatting prompts" in captured.err and "Saving the dataset" in captured.err
    assert _library_output_state() == before


@pytest.mark.parametrize("verbose", [False, True])
def test_a_library_logging_to_stdout_is_moved_to_stderr(capsys, verbose):
    """DeepSpeed's logger writes to stdout (``accelerate`` imports it when installed): inside a command its records
    go to stderr at the command's level, so stdout stays the summary; outside, the logger is as it was."""
    library = logging.getLogger(DEEPSPEED_LOGGER)
    filters = library.filters[:]  # DeepSpeed's own, if it is imported
    handler = logging.StreamHandler(sys.stdout)  # as DeepSpeed sets itself up
    library.addHandler(handler)
    try:
        with cli_output(verbose=verbose):
            library.warning("Setting accelerator to CPU.")
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "Setting accelerator to CPU." in captured.err
        library.warning("outside a command")
        assert capsys.readouterr().out == "outside a command\n"
        assert library.filters == filters
    finally:
        library.removeHandler(handler)


@pytest.mark.slow
def test_rollout_train_eval_chain(tmp_path, monkeypatch, capsys):
    _tiny_workspace(tmp_path)

    # rollout (in this process): the shipped config, overridden on the command line
    monkeypatch.chdir(tmp_path)
    assert main(["rollout", "--config", str(CONFIGS / "rollout.yaml"), "--max_samples", "10", "--batch_size", "4"]) == 0
    trajectories = load_from_disk(str(tmp_path / "rollouts" / "tiny" / "dataset"))
    assert len(trajectories) == 10 and (tmp_path / "rollouts" / "tiny" / "done").exists()
    assert {"prompt_ids", "completion_ids", "step_map", "nfe"} <= set(trajectories.column_names)
    assert all(len(s) == len(c) for s, c in zip(trajectories["step_map"], trajectories["completion_ids"]))
    assert set(trajectories["block_size"]) == {4} and set(trajectories["steps_per_block"]) == {4}

    # train (as a program, `python -m t3d_trl.cli`): the student on those trajectories; the rollout directory
    # itself is the dataset path
    _run(["train", "--config", str(CONFIGS / "train.yaml"), "--max_steps", "2", "--logging_steps", "1",
          "--per_device_train_batch_size", "4", "--dtype", "float32"], tmp_path)  # fmt: skip
    student = tmp_path / "tiny-t3d-cli"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"):
        assert (student / name).exists(), name
    generation = json.loads((student / "generation_config.json").read_text())["block_diffusion"]
    assert generation["block_size"] == 4 and generation["mask_token_id"] is not None

    # eval (in this process): the student on the demo prompts (custom scorers registered by a module) and on a
    # GSM8K file (chat prompts)
    assert main(
        ["eval", "--config", str(CONFIGS / "eval.yaml"),
         "--eval_dataset", "t3d-demo/seed0/prompts.jsonl", "gsm8k", "--eval_data_files", str(FIXTURES / "gsm8k.jsonl"),
         "--eval_limit", "2", "--block_sizes", "4", "--tokens_per_step", "2", "4"]
    ) == 0  # fmt: skip
    assert "Average over" in capsys.readouterr().out
    out = tmp_path / "eval" / "tiny"
    report = json.loads((out / "results.json").read_text())
    assert report["model_name_or_path"] == "tiny-t3d-cli"
    assert [s["steps_per_block"] for s in report["settings"]] == [2, 1]
    assert {r["dataset"] for r in report["results"]} == {"prompts", "gsm8k"} and len(report["average"]) == 2
    results = read_json(out / "results.json")
    assert all(0.0 <= r.accuracy <= 1.0 and r.num_samples == 2 for r in results)
    assert all(math.isfinite(r.avg_nfe) and r.avg_nfe > 0 for r in results)
    for name in ("results.md", "accuracy_vs_tokens_per_step.png"):
        assert (out / name).stat().st_size > 0
        assert (out / "gsm8k" / name).stat().st_size > 0
    assert (out / "prompts" / "samples_B4-S2-static.jsonl").exists()
    assert "| Setting |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_demo_command_runs_a_micro_demo(tmp_path, capsys):
    """`t3d-trl demo` flags reach `run_demo` (a micro demo: one task, one method, a few steps)."""
    import torch

    threads = torch.get_num_threads()  # run_demo sets the thread count of this process
    try:
        assert main([
            "demo", "--output_dir", str(tmp_path), "--tasks", "words", "--methods", "T3D", "--seeds", "0",
            "--hidden_size", "32", "--num_layers", "1", "--teacher_steps", "3", "--teacher_batch_size", "8",
            "--rollouts_per_task", "4", "--student_steps", "2", "--student_batch_size", "4",
            "--eval_prompts_per_task", "3", "--eval_block_sizes", "4", "--tokens_per_step", "1", "4",
        ]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["config"]["methods"] == ["T3D"] and report["config"]["tasks"] == ["words"]
    captured = capsys.readouterr()  # a readable run: a line per stage, the table; none of the libraries' noise
    stages = [line for line in captured.out.splitlines() if line.startswith("[seed 0]")]
    assert [line.split(":")[0] for line in stages] == [
        "[seed 0] teacher trained", "[seed 0] teacher evaluated", "[seed 0] teacher rollouts", "[seed 0] T3D"
    ]  # fmt: skip
    assert "| TokPS | Method |" in captured.out
    for noise in ("Filter", "Indexing trajectories", "Saving the dataset", "Writing model shards", "INFO"):
        assert noise not in captured.err, noise
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.json").exists()


def test_the_choices_of_registered_names_come_from_the_registries():
    from t3d_trl.generation.remasking import REMASKING
    from t3d_trl.models.families import FAMILIES, BlockCausalFamily, register_family
    from t3d_trl.scripts.evaluate import make_parser as eval_parser
    from t3d_trl.scripts.train import make_parser as train_parser

    class PluginFamily(BlockCausalFamily):
        name = "plugin_family"

        @classmethod
        def matches(cls, model) -> bool:
            return False

    register_family(PluginFamily)
    try:
        train = {action.dest: action for action in train_parser(prog="t3d-trl train")._actions}
        assert train["model_family"].choices == list(FAMILIES.choices()) and "plugin_family" in FAMILIES.choices()
        assert train["loss_type"].choices == ["ddo", "path", "td", "sft", "dparallel", "anchor"]
        evaluate = {action.dest: action for action in eval_parser(prog="t3d-trl eval")._actions}
        assert evaluate["remasking"].choices == list(REMASKING.choices()) and "low_confidence" in REMASKING.choices()
    finally:
        FAMILIES.unregister("plugin_family")
