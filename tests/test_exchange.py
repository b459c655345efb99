"""Tests of `t3d_trl.rollout.exchange`, `conventions` and `block_refinement`: trajectories of other producers in,
t3d-trl's out.

Each producer's records are built here from its documented output (the official sampler's JSON, JetEngine's and
SGLang's `generate` outputs) out of t3d-trl rollouts of a tiny teacher, so the rows an import must give are known.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk

from t3d_trl import T3DTrainer
from t3d_trl.cli import main
from t3d_trl.data import prepare_trajectory_dataset
from t3d_trl.rollout import (
    TRAJECTORY_FORMATS,
    BlockRefinementRecorder,
    RawTrajectory,
    TrajectoryFormat,
    export_trajectories,
    generate_trajectories,
    import_summary,
    import_trajectories,
    register_trajectory_format,
)
from t3d_trl.rollout.conventions import StepConvention, convert_trajectory, to_library_steps, to_producer_steps
from t3d_trl.testing import tiny_qwen3, tiny_t3d_config, tiny_tokenizer

BLOCK, STEPS, SAMPLES = 4, 2, 3
QUESTIONS = ["hi", "2+2?", "count to five please", "zz", "abc", "what is 12+30?"]
TRAJECTORY = ["prompt_ids", "completion_ids", "step_map", "sample_index", "block_size", "steps_per_block"]


def eos_likely_teacher(tokenizer, seed: int = 0):
    """The tiny teacher with EOS made likely (it replaces the token "3"), so completions end at different lengths."""
    model = tiny_qwen3(seed=seed)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = model.lm_head.weight[tokenizer.convert_tokens_to_ids("3")] * 1.01
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def rollouts(tokenizer):
    """t3d-trl rollouts of the tiny teacher: 3 samples of each chat prompt, blocks of 4 in 2 steps."""
    prompts = Dataset.from_dict(
        {
            "question": QUESTIONS,
            "prompt": [[{"role": "user", "content": question}] for question in QUESTIONS],
            "ground_truth_answer": [str(index) for index in range(len(QUESTIONS))],
        }
    )
    settings = {"block_size": BLOCK, "steps_per_block": STEPS, "temperature": 1.0, "max_new_tokens": 12}
    rows = generate_trajectories(
        eos_likely_teacher(tokenizer), tokenizer, prompts, settings, num_generations=SAMPLES, progress=False
    )
    ends = {ids[-1] == tokenizer.eos_token_id for ids in rows["completion_ids"]}
    assert ends == {True, False}, "the fixture needs completions with and without EOS"
    assert len({len(ids) % BLOCK for ids in rows["prompt_ids"]}) > 1, "the fixture needs prompts off the block grid"
    return rows


def by_prompt(rows) -> list[list[dict]]:
    rows = list(rows)
    return [rows[start : start + SAMPLES] for start in range(0, len(rows), SAMPLES)]


def columns(dataset, names=TRAJECTORY) -> dict[str, list]:
    return {name: list(dataset[name]) for name in names}


# --------------------------------------------------------------------------------------------------------------------
# The producers' records, from their documented outputs
# --------------------------------------------------------------------------------------------------------------------


def official_items(rows, tokenizer, answer_key: str = "answer") -> list[dict]:
    """The official sampler's JSON (sample/sdar_sample.py, then data/rename_key.py's `full_output` -> `answer`): one
    item per prompt, the templated prompt as text, each completion decoded with its special tokens, the 1-based
    global step of each completion token."""
    items = []
    for group in by_prompt(rows):
        first = group[0]
        items.append(
            {
                "question": first["question"],
                "ground_truth_answer": first["ground_truth_answer"],
                "prompt": tokenizer.apply_chat_template(first["prompt"], tokenize=False, add_generation_prompt=True),
                answer_key: [tokenizer.decode(row["completion_ids"], skip_special_tokens=False) for row in group],
                "step_map": [[step + 1 for step in row["step_map"]] for row in group],
                "extracted_output": [row["completion"][-2:] for row in group],
                "response_length": [sum(t != tokenizer.pad_token_id for t in row["completion_ids"]) for row in group],
            }
        )
    return items


def jetengine_outputs(rows, tokenizer) -> list[dict]:
    """JetEngine's `generate` outputs: `token_ids` = prompt + completion, where the block of the EOS is kept whole
    (the engine commits whole blocks), and the 1-based global first-commit step of every completion token."""
    outputs = []
    for row in rows:
        completion, steps = list(row["completion_ids"]), [step + 1 for step in row["step_map"]]
        if completion[-1] == tokenizer.eos_token_id:
            rest = -(len(row["prompt_ids"]) + len(completion)) % BLOCK
            completion += tokenizer("xyz"[:rest], add_special_tokens=False)["input_ids"]
            steps += [max(steps) - index for index in range(rest)]
        ids = row["prompt_ids"] + completion
        outputs.append(
            {"text": tokenizer.decode(ids), "token_ids": ids, "trajectory": steps, "logprobs": [-0.5] * len(steps)}
        )
    return outputs


def sglang_outputs(rows, tokenizer) -> list[dict]:
    """SGLang's `Engine.generate(..., return_step_maps=True)` outputs (pull request 27943), with the request's
    `input_ids`: the step of each token counted from 1 in its block (blocks on the absolute grid; a block starts
    right after the previous one's last step)."""
    outputs = []
    for row in rows:
        prompt_length, step_maps, block, first, last = len(row["prompt_ids"]), [], None, 0, -1
        for position, step in enumerate(row["step_map"]):
            if (prompt_length + position) // BLOCK != block:
                block, first = (prompt_length + position) // BLOCK, last + 1
            step_maps.append(step - first + 1)
            last = max(last, step)
        ended = row["completion_ids"][-1] == tokenizer.eos_token_id
        outputs.append(
            {
                "text": tokenizer.decode(row["completion_ids"], skip_special_tokens=True),
                "output_ids": row["completion_ids"],
                "meta_info": {
                    "step_maps": step_maps,
                    "prompt_tokens": prompt_length,
                    "completion_tokens": len(row["completion_ids"]),
                    "finish_reason": {"type": "stop", "matched": 1} if ended else {"type": "length", "length": 12},
                },
                "input_ids": row["prompt_ids"],
            }
        )
    return outputs


def train_two_steps(dataset, tmp_path) -> None:
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path, max_steps=2),
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


# --------------------------------------------------------------------------------------------------------------------
# Import: each producer's records give the rollouts' rows, which train
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer_key", ["answer", "full_output"])
def test_official_json_every_sample_becomes_a_row(tmp_path, tokenizer, rollouts, answer_key):
    path = tmp_path / "official.json"
    path.write_text(json.dumps(official_items(rollouts, tokenizer, answer_key)))
    imported = import_trajectories(path, tokenizer, "t3d-json", block_size=BLOCK, steps_per_block=STEPS)
    assert columns(imported) == columns(rollouts)
    assert list(imported["question"]) == list(rollouts["question"])
    assert list(imported["ground_truth_answer"]) == list(rollouts["ground_truth_answer"])
    assert list(imported["extracted_output"]) == [completion[-2:] for completion in rollouts["completion"]]
    summary = import_summary(imported)
    assert (summary["records"], summary["rows_in"], summary["rows_out"]) == (
        len(QUESTIONS),
        len(rollouts),
        len(rollouts),
    )
    assert summary["dropped"] == {} and summary["cut_after_eos"] == 0
    assert summary["without_eos"] == sum(ids[-1] != tokenizer.eos_token_id for ids in rollouts["completion_ids"])


def test_official_json_without_prompt_reads_the_question_through_the_chat_template(tokenizer, rollouts):
    items = [
        {key: value for key, value in item.items() if key != "prompt"} for item in official_items(rollouts, tokenizer)
    ]
    imported = import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK)
    assert columns(imported, ["prompt_ids", "completion_ids", "step_map"]) == columns(
        rollouts, ["prompt_ids", "completion_ids", "step_map"]
    )


def test_reading_as_the_official_trainer_gives_the_first_row_of_each_prompt(tokenizer, rollouts):
    """The official trainer reads `question` through the chat template, `answer[0]` re-tokenised and `step_map[0]`
    (trimmed or padded to the tokens): the same tokens and commit order as the import's first row per prompt."""
    items = official_items(rollouts, tokenizer)
    imported = import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK, steps_per_block=STEPS)
    firsts = imported.filter(lambda row: row["sample_index"] == 0)
    assert len(firsts) == len(items)
    for item, row in zip(items, firsts):
        messages = [{"role": "user", "content": item["question"]}]
        prompt = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        response = tokenizer(item["answer"][0])["input_ids"]
        steps = item["step_map"][0][: len(response)] + [-1] * (len(response) - len(item["step_map"][0]))
        assert prompt["input_ids"] == row["prompt_ids"] and response == row["completion_ids"]
        order = np.argsort(steps, kind="stable").tolist()
        assert order == np.argsort(row["step_map"], kind="stable").tolist()
        assert steps == [step + 1 for step in row["step_map"]]


def test_jetengine_outputs_are_cut_after_eos(tokenizer, rollouts):
    outputs = jetengine_outputs(rollouts, tokenizer)
    imported = import_trajectories(outputs, tokenizer, "jetengine", block_size=BLOCK, steps_per_block=STEPS)
    assert columns(imported) == {**columns(rollouts), "sample_index": [0] * len(rollouts)}
    cut = sum(
        len(out["token_ids"]) > len(row["prompt_ids"]) + len(row["completion_ids"])
        for out, row in zip(outputs, rollouts)
    )
    assert cut > 0 and import_summary(imported)["cut_after_eos"] == cut
    assert list(imported["logprobs"]) == [out["logprobs"] for out in outputs]  # the engine's other fields are kept


def test_jetengine_prompt_given_with_the_record_is_checked(tokenizer, rollouts):
    outputs = jetengine_outputs(rollouts, tokenizer)
    outputs[0]["prompt"] = rollouts[0]["prompt"]
    outputs[1]["prompt_ids"] = [5] + rollouts[1]["prompt_ids"][1:]  # not the prompt the engine decoded
    imported = import_trajectories(outputs, tokenizer, "jetengine", block_size=BLOCK)
    assert import_summary(imported)["dropped"] == {"prompt_mismatch": 1}
    assert imported[0]["prompt"] == rollouts[0]["prompt"] and imported[0]["prompt_ids"] == rollouts[0]["prompt_ids"]


def test_sglang_outputs_with_per_block_step_maps(tokenizer, rollouts):
    outputs = sglang_outputs(rollouts, tokenizer)
    assert any(max(out["meta_info"]["step_maps"]) < max(row["step_map"]) for out, row in zip(outputs, rollouts))
    imported = import_trajectories(outputs, tokenizer, "sglang", block_size=BLOCK, steps_per_block=STEPS)
    assert columns(imported) == {**columns(rollouts), "sample_index": [0] * len(rollouts)}
    outputs[2]["meta_info"]["prompt_tokens"] += 1
    summary = import_summary(import_trajectories(outputs, tokenizer, "sglang", block_size=BLOCK))
    assert summary["dropped"] == {"prompt_mismatch": 1}
    assert summary["first_problem"]["prompt_mismatch"].startswith("record 2, sample 0: the producer counted")


def test_sglang_outputs_without_step_maps_are_refused(tokenizer, rollouts):
    outputs = sglang_outputs(rollouts, tokenizer)
    del outputs[3]["meta_info"]["step_maps"]
    with pytest.raises(
        ValueError, match=r"Record 3 has no `meta_info\['step_maps'\]`.*return_step_maps=True.*LowConfidence"
    ):
        import_trajectories(outputs, tokenizer, "sglang", block_size=BLOCK)
    outputs = sglang_outputs(rollouts, tokenizer)
    del outputs[0]["input_ids"]
    with pytest.raises(ValueError, match=r"Record 0 has no prompt: .*input_ids"):
        import_trajectories(outputs, tokenizer, "sglang", block_size=BLOCK)


@pytest.mark.parametrize("fmt", ["t3d-json", "jetengine", "sglang"])
def test_imported_trajectories_train(tmp_path, tokenizer, rollouts, fmt):
    build = {"t3d-json": official_items, "jetengine": jetengine_outputs, "sglang": sglang_outputs}[fmt]
    imported = import_trajectories(build(rollouts, tokenizer), tokenizer, fmt, block_size=BLOCK, steps_per_block=STEPS)
    prepared, stats = prepare_trajectory_dataset(imported, tokenizer, vocab_size=len(tokenizer))
    assert stats["num_rows_out"] == len(rollouts) and stats["tokenized_completions"] == 0
    train_two_steps(imported, tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# Misaligned and bad samples are dropped and counted, never trimmed
# --------------------------------------------------------------------------------------------------------------------


def test_a_misaligned_step_map_is_reported_not_trimmed(tokenizer, rollouts):
    items = official_items(rollouts, tokenizer)
    items[0]["step_map"][1].append(items[0]["step_map"][1][-1])  # one step more than tokens
    items[2]["step_map"][0].pop()  # one step fewer
    items[4]["step_map"][2] = ""  # the official sampler's empty step map
    imported = import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK, steps_per_block=STEPS)
    summary = import_summary(imported)
    assert summary["dropped"] == {"length_mismatch": 2, "no_step_map": 1}
    assert summary["rows_out"] == len(rollouts) - 3
    assert summary["first_problem"]["length_mismatch"].startswith("record 0, sample 1: len(step_map)=")
    expected = [row for index, row in enumerate(rollouts) if index not in (1, 6, 14)]
    assert columns(imported) == {name: [row[name] for row in expected] for name in TRAJECTORY}
    with pytest.raises(ValueError, match=r"Record 0 \(sample 1\) cannot be imported: length_mismatch"):
        import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK, strict=True)


def test_steps_that_are_no_schedule_on_the_family_grid_are_dropped(tokenizer, rollouts):
    items = official_items(rollouts, tokenizer)
    items[1]["step_map"][0] = [1] * len(items[1]["step_map"][0])  # every token at the first step
    item_grid = import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK, steps_per_block=STEPS)
    assert import_summary(item_grid)["dropped"] == {"not_a_schedule": 1}
    # the response grid of a bidirectional family does not hold trajectories made on the absolute grid
    response_grid = import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK, model_family="bidirectional")
    summary = import_summary(response_grid)
    assert summary["grid"] == "response" and summary["dropped"]["not_a_schedule"] > 1


def test_mask_tokens_and_foreign_ids_are_dropped(tokenizer, rollouts):
    outputs = jetengine_outputs(rollouts, tokenizer)
    outputs[0]["token_ids"][len(rollouts[0]["prompt_ids"])] = tokenizer.mask_token_id
    outputs[1]["token_ids"][-1] = len(tokenizer) + 3
    imported = import_trajectories(outputs, tokenizer, "jetengine", block_size=BLOCK)
    assert import_summary(imported)["dropped"] == {"mask_token_in_completion": 1, "token_id_outside_vocabulary": 1}


def test_nothing_to_import_and_bad_arguments_are_refused(tmp_path, tokenizer, rollouts):
    items = official_items(rollouts, tokenizer)
    for item in items:
        item["step_map"] = [[0] + steps for steps in item["step_map"]]
    with pytest.raises(
        ValueError, match=r"No sample could be imported: .* 0 rows out, 18 dropped \(length_mismatch: 18\)"
    ):
        import_trajectories(items, tokenizer, "t3d-json", block_size=BLOCK)
    with pytest.raises(ValueError, match=r"Unknown trajectory format 'vllm'; choose from t3d-json, jetengine"):
        import_trajectories(items, tokenizer, "vllm", block_size=BLOCK)
    with pytest.raises(ValueError, match=r"block size is unknown \(record 0 has none\): pass `block_size=`"):
        import_trajectories(items, tokenizer, "t3d-json")
    with pytest.raises(ValueError, match=r"`steps_per_block` \(8\) cannot exceed `block_size` \(4\)"):
        import_trajectories(items, tokenizer, "t3d-json", block_size=4, steps_per_block=8)
    with pytest.raises(ValueError, match=r"`block_size` must be a positive integer or None, got 0"):
        import_trajectories(items, tokenizer, "t3d-json", block_size=0)
    with pytest.raises(ValueError, match=r"Record 0 is not a jetengine record: it lacks \['token_ids', 'trajectory'\]"):
        import_trajectories(items, tokenizer, "jetengine", block_size=BLOCK)
    with pytest.raises(TypeError, match=r"`source` must be a path"):
        import_trajectories(42, tokenizer, block_size=BLOCK)
    with pytest.raises(FileNotFoundError, match=r"No trajectories at"):
        import_trajectories(tmp_path / "missing.json", tokenizer, block_size=BLOCK)
    with pytest.raises(ValueError, match=r"Unknown model family 'sdar'"):
        import_trajectories(items, tokenizer, block_size=BLOCK, model_family="sdar")


# --------------------------------------------------------------------------------------------------------------------
# Export -> import is the identity
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, suffix", [("t3d-json", ".json"), ("jetengine", ".jsonl"), ("sglang", ".json"), ("t3d-trl", ".jsonl")]
)
def test_export_then_import_is_the_identity(tmp_path, tokenizer, rollouts, fmt, suffix):
    path = export_trajectories(rollouts, tmp_path / f"out{suffix}", tokenizer, fmt)
    imported = import_trajectories(path, tokenizer, fmt, block_size=BLOCK, steps_per_block=STEPS)
    kept = [name for name in rollouts.column_names if name != "prompt"]
    assert columns(imported, kept) == columns(rollouts, kept)
    if fmt == "t3d-json":  # the official item holds the prompt as text: the prompt ids decoded
        assert list(imported["prompt"]) == [
            tokenizer.decode(ids, skip_special_tokens=False) for ids in rollouts["prompt_ids"]
        ]
        assert len(json.loads(path.read_text())) == len(QUESTIONS)
    else:
        assert list(imported["prompt"]) == list(rollouts["prompt"])


def test_export_refuses_what_a_format_cannot_hold(tmp_path, tokenizer, rollouts):
    with pytest.raises(ValueError, match=r"The 'diffusers' format is read only; formats that can be written"):
        export_trajectories(rollouts, tmp_path / "x.json", tokenizer, "diffusers")
    varying = rollouts.add_column("reward", [float(index) for index in range(len(rollouts))])
    with pytest.raises(ValueError, match=r"Column `reward` differs between the samples of one prompt"):
        export_trajectories(varying, tmp_path / "x.json", tokenizer, "t3d-json")
    broken = rollouts.map(
        lambda row, index: {"step_map": row["step_map"][::-1]} if index == 2 else {}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"Row 2 is not a trajectory the 'sglang' format can hold"):
        export_trajectories(broken, tmp_path / "x.json", tokenizer, "sglang")
    shuffled = rollouts.select([1, 0, *range(2, len(rollouts))])
    with pytest.raises(ValueError, match=r"Row 0 \(sample_index 1\) does not continue the samples"):
        export_trajectories(shuffled, tmp_path / "x.json", tokenizer, "t3d-json")


def test_rollout_directories_and_datasets_are_read_in_t3d_trl_format(tmp_path, tokenizer, rollouts):
    rollouts.save_to_disk(str(tmp_path / "saved"))
    for source in (rollouts, tmp_path / "saved"):
        imported = import_trajectories(source, tokenizer, "t3d-trl", steps_per_block=STEPS)
        assert columns(imported) == columns(rollouts)
    with pytest.raises(ValueError, match=r"Record 0 says block_size=4 but `block_size=8` was given"):
        import_trajectories(rollouts, tokenizer, "t3d-trl", block_size=8)


# --------------------------------------------------------------------------------------------------------------------
# Conventions
# --------------------------------------------------------------------------------------------------------------------


def test_per_block_and_idle_step_numberings():
    per_block = StepConvention(first_step=1, per_block=True, grid="absolute")
    # prompt of 2 tokens, blocks of 4: completion tokens 0-1 in block 0, 2-5 in block 1, 6 in block 2
    assert to_library_steps([2, 1, 1, 3, 2, 4, 1], per_block, 2, 4, "absolute").tolist() == [1, 0, 2, 4, 3, 5, 6]
    assert to_producer_steps([1, 0, 2, 4, 3, 5, 6], per_block, 2, 4, "absolute").tolist() == [2, 1, 1, 3, 2, 4, 1]
    idle = StepConvention(counts_idle_steps=True, uncommitted=-1)
    assert to_library_steps([3, 1, -1, 5, 9, 5], idle, 0, 4, "absolute").tolist() == [1, 0, -1, 2, 3, 2]
    with pytest.raises(ValueError, match=r"counts idle steps"):
        to_producer_steps([0, 1], idle, 0, 4, "absolute")
    with pytest.raises(ValueError, match=r"first_step must be 0 or 1, got 2"):
        StepConvention(first_step=2)


def test_producer_numberings_are_exact_inverses(rollouts):
    conventions = [StepConvention(first_step=1), StepConvention(first_step=1, per_block=True, grid="absolute")]
    for row in rollouts:
        for convention in conventions:
            produced = to_producer_steps(row["step_map"], convention, len(row["prompt_ids"]), BLOCK, "absolute")
            back = to_library_steps(produced, convention, len(row["prompt_ids"]), BLOCK, "absolute")
            assert back.tolist() == row["step_map"]


def test_conversion_never_trims_and_names_its_reason():
    library = StepConvention()
    assert convert_trajectory([1, 2], [5, 6, 7], [0, 1], library, block_size=4, grid="absolute").reason == (
        "length_mismatch"
    )
    with_prompt = StepConvention(ids_include_prompt=True)
    result = convert_trajectory([1, 2], [1, 9, 5, 6], [0, 1], with_prompt, block_size=4, grid="absolute")
    assert (result.reason, result.detail) == ("prompt_mismatch", "the ids do not start with the prompt given")
    result = convert_trajectory(
        None, [1, 2, 5, 1, 7], [1, 0, 2], with_prompt, block_size=4, grid="absolute", eos_token_ids=[1]
    )
    assert (result.prompt_ids, result.completion_ids, result.step_map, result.cut_after_eos) == (
        [1, 2],
        [5, 1],
        [1, 0],
        True,
    )
    assert convert_trajectory([1], [5], [True], library, block_size=4, grid="absolute").reason == "malformed_step_map"


# --------------------------------------------------------------------------------------------------------------------
# A format of one's own
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def zero_based_per_block():
    """A producer that numbers steps from 0 in every block and writes `{"ids", "prompt", "steps"}`."""

    def read(record, index):
        return [RawTrajectory(record=index, prompt=record["prompt"], ids=record["ids"], steps=record["steps"])]

    fmt = register_trajectory_format(
        TrajectoryFormat(
            name="zero-per-block",
            description="0-based per-block steps",
            convention=StepConvention(first_step=0, per_block=True, grid="absolute"),
            read=read,
        )
    )
    yield fmt
    TRAJECTORY_FORMATS.unregister(fmt.name)


def test_a_registered_format_imports(zero_based_per_block, tokenizer, rollouts):
    sglang = sglang_outputs(rollouts, tokenizer)
    records = [
        {"prompt": row["prompt"], "ids": row["completion_ids"], "steps": [s - 1 for s in out["meta_info"]["step_maps"]]}
        for row, out in zip(rollouts, sglang)
    ]
    imported = import_trajectories(records, tokenizer, "zero-per-block", block_size=BLOCK, steps_per_block=STEPS)
    assert columns(imported, ["prompt_ids", "completion_ids", "step_map"]) == columns(
        rollouts, ["prompt_ids", "completion_ids", "step_map"]
    )
    with pytest.raises(ValueError, match=r"A trajectory format is already registered as 'zero-per-block'"):
        register_trajectory_format(
            TrajectoryFormat("zero-per-block", "again", StepConvention(), zero_based_per_block.read)
        )


# --------------------------------------------------------------------------------------------------------------------
# The real Qwen vocabulary (test extra: dashscope, tiktoken)
# --------------------------------------------------------------------------------------------------------------------

QWEN_TEXTS = [
    ("What is 12 + 30?", "We add the tens: 10 + 30 = 40, then the units: 2. So the answer is \\boxed{42}."),
    (
        "Simplify $\\frac{6}{8}$.",
        "Both are even: $\\frac{6}{8} = \\frac{3}{4}$.\n\nThe answer is \\boxed{\\frac{3}{4}}.",
    ),
    ("Let's compute 7*8.", "7 times 8 is 56, since 7*8 = 7*10 - 7*2 = 70 - 14 = 56. Final answer: \\boxed{56}"),
]


def block_schedule(prompt_length: int, length: int, rng: random.Random) -> list[int]:
    """One token per step, in a random order inside each block of the absolute grid, block after block."""
    steps, done = [], 0
    while done < length:
        size = min(BLOCK - (prompt_length + done) % BLOCK, length - done)
        steps += [done + offset for offset in rng.sample(range(size), size)]
        done += size
    return steps


def qwen_rows(tokenizer) -> list[dict]:
    rng, rows = random.Random(0), []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for question, answer in QWEN_TEXTS:
        messages = [{"role": "user", "content": question}]
        prompt_ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [im_end, tokenizer.eos_token_id]
        ids = prompt_ids["input_ids"]
        rows.append(
            {
                "question": question,
                "prompt": messages,
                "prompt_ids": ids,
                "completion_ids": completion,
                "step_map": block_schedule(len(ids), len(completion), rng),
                "block_size": BLOCK,
                "sample_index": 0,
            }
        )
    return rows


def test_the_qwen_fixture_is_the_real_vocabulary(qwen_tokenizer):
    assert qwen_tokenizer("Let's compute")["input_ids"] == [10061, 594, 12564]
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "</think>", "<|MASK|>")
    assert qwen_tokenizer.convert_tokens_to_ids(list(specials)) == [151643, 151644, 151645, 151668, 151669]
    assert (qwen_tokenizer.eos_token_id, qwen_tokenizer.mask_token_id, len(qwen_tokenizer)) == (151643, 151669, 151670)


@pytest.mark.parametrize("fmt", ["t3d-json", "jetengine", "sglang", "t3d-trl"])
def test_text_round_trip_with_the_real_qwen_vocabulary(tmp_path, qwen_tokenizer, fmt):
    rows = qwen_rows(qwen_tokenizer)
    path = export_trajectories(rows, tmp_path / "qwen.jsonl", qwen_tokenizer, fmt)
    imported = import_trajectories(path, qwen_tokenizer, fmt, block_size=BLOCK, strict=True)
    assert columns(imported, ["prompt_ids", "completion_ids", "step_map", "question"]) == {
        name: [row[name] for row in rows] for name in ("prompt_ids", "completion_ids", "step_map", "question")
    }
    if fmt == "t3d-json":  # the official text, as the official trainer reads it
        item = json.loads(path.read_text().splitlines()[0])
        assert item["answer"][0].endswith("\\boxed{42}.<|im_end|><|endoftext|>")


def test_ids_that_do_not_survive_their_text_are_dropped_not_trimmed(qwen_tokenizer):
    """Decoding arbitrary ids and re-encoding the text does not give them back: the official trainer trims such
    step maps silently; the import drops the sample and counts it."""
    rng = random.Random(0)
    ids = [rng.randrange(151643) for _ in range(50)]
    text = qwen_tokenizer.decode(ids)
    assert len(qwen_tokenizer(text, add_special_tokens=False)["input_ids"]) != len(ids)  # 51 with this seed
    good = qwen_rows(qwen_tokenizer)[0]
    item = {
        "question": good["question"],
        "prompt": qwen_tokenizer.decode(good["prompt_ids"]),
        "answer": [qwen_tokenizer.decode(good["completion_ids"]), text],
        "step_map": [
            [step + 1 for step in good["step_map"]],
            [step + 1 for step in block_schedule(len(good["prompt_ids"]), 50, rng)],
        ],
    }
    imported = import_trajectories([item], qwen_tokenizer, "t3d-json", block_size=BLOCK)
    assert import_summary(imported)["dropped"] == {"length_mismatch": 1}
    assert list(imported["completion_ids"]) == [good["completion_ids"]]
    with pytest.raises(
        ValueError, match=r"Record 0 \(sample 1\) cannot be imported: length_mismatch \(len\(step_map\)=50 !="
    ):
        import_trajectories([item], qwen_tokenizer, "t3d-json", block_size=BLOCK, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# diffusers' LLaDA2Pipeline, recorded (test extra: diffusers)
# --------------------------------------------------------------------------------------------------------------------


def run_llada2_pipeline(tokenizer, editing_threshold=None):
    """A real diffusers LLaDA2Pipeline decoding two prompts of equal length with the tiny teacher on CPU, recorded;
    also keeps a copy of the window after every step (an independent account of the commits)."""
    diffusers = pytest.importorskip(
        "diffusers", reason="the LLaDA2Pipeline test needs diffusers (pip install -e '.[dev]')"
    )
    pipe = diffusers.LLaDA2Pipeline(
        model=eos_likely_teacher(tokenizer, seed=1),
        scheduler=diffusers.BlockRefinementScheduler(block_length=BLOCK),
        tokenizer=tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    recorder, windows = BlockRefinementRecorder(), []

    def callback(pipeline, step, timestep, tensors):
        windows.append(tensors["block_x"].clone())
        return recorder(pipeline, step, timestep, tensors)

    prompts = torch.tensor([tokenizer("abc 1+2=x")["input_ids"], tokenizer("hello wor")["input_ids"]])
    output = pipe(
        input_ids=prompts, gen_length=16, block_length=BLOCK, num_inference_steps=BLOCK, temperature=0.0,
        threshold=0.05, editing_threshold=editing_threshold, output_type="seq", callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=recorder.tensor_inputs,
    )  # fmt: skip
    return prompts, output.sequences, recorder.records(output.sequences), windows


def test_block_refinement_recorder_on_a_real_llada2_pipeline(tmp_path, tokenizer):
    prompts, sequences, records, windows = run_llada2_pipeline(tokenizer)
    prompt_length = prompts.shape[1]
    for row, record in enumerate(records):
        assert record["prompt_ids"] == prompts[row].tolist() and record["completion_ids"] == sequences[row].tolist()
        for position, step in enumerate(record["step_map"]):
            column = prompt_length + position
            seen = [
                index
                for index, window in enumerate(windows)
                if window.shape[1] > column and window[row, column] != tokenizer.mask_token_id
            ]
            assert step == (seen[0] if seen else -1), (row, position)  # committed where it first stops being the mask
    raw = sorted({step for record in records for step in record["step_map"] if step >= 0})
    assert raw != list(range(len(raw))), "the run must have steps that commit nothing (the end-of-block passes)"
    imported = import_trajectories(
        records, tokenizer, "diffusers", block_size=BLOCK, steps_per_block=BLOCK, strict=True
    )
    for record, row in zip(records, imported):
        end = row["completion_ids"].__len__()
        kept = np.asarray(record["step_map"][:end])
        assert (np.argsort(kept, kind="stable") == np.argsort(row["step_map"], kind="stable")).all()
    prepare_trajectory_dataset(imported, tokenizer, vocab_size=len(tokenizer))
    train_two_steps(imported, tmp_path)


def test_edits_after_commit_are_dropped(tokenizer):
    """With diffusers' editing on, committed tokens get replaced: those sequences are no trajectory."""
    _, _, records, _ = run_llada2_pipeline(tokenizer, editing_threshold=0.01)

    def edited_before_eos(record) -> bool:
        ids = record["completion_ids"]
        end = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
        return any(record["edited"][:end])

    edited = sum(edited_before_eos(record) for record in records)
    assert edited > 0, "the run must edit committed tokens"
    if edited < len(records):
        summary = import_summary(import_trajectories(records, tokenizer, "diffusers", block_size=BLOCK))
        assert summary["dropped"] == {"edited_after_commit": edited}
    else:
        with pytest.raises(ValueError, match=rf"0 rows out, {edited} dropped \(edited_after_commit: {edited}\)"):
            import_trajectories(records, tokenizer, "diffusers", block_size=BLOCK)


def test_the_recorder_says_how_to_use_it(tokenizer):
    recorder = BlockRefinementRecorder()
    with pytest.raises(ValueError, match=r"Nothing was recorded"):
        recorder.records(torch.zeros((1, 4), dtype=torch.long))
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs=recorder.tensor_inputs"):
        recorder(None, 0, 0, {"block_x": torch.zeros((1, 4), dtype=torch.long)})


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def test_import_command_prints_one_summary_line(tmp_path, tokenizer, rollouts, capsys):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    items = official_items(rollouts, tokenizer)
    items[1]["step_map"][2].append(1)
    (tmp_path / "official.json").write_text(json.dumps(items))
    argv = [
        "import", "--dataset_path", str(tmp_path / "official.json"), "--tokenizer_name_or_path",
        str(tmp_path / "tokenizer"), "--block_size", "4", "--steps_per_block", "2", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        f"Imported 18 rows in (6 t3d-json records), 17 rows out, 1 dropped (length_mismatch: 1); saved to "
        f"{tmp_path / 'out'}"
    )
    saved = load_from_disk(str(tmp_path / "out"))
    assert len(saved) == 17 and import_summary(saved)["dropped"] == {"length_mismatch": 1}
    assert main([*argv, "--strict"]) == 1
    assert "cannot be imported: length_mismatch" in capsys.readouterr().err


def test_import_command_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: t3d-trl import")
    for flag in ("--format", "--block_size", "--steps_per_block", "--model_family", "--eos_token_id", "--strict"):
        assert flag in text, flag
