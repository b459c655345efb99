"""Tests of `t3d_trl.rollout`: teacher rollouts into the trajectory format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk

import t3d_trl
from t3d_trl.data import prepare_trajectory_dataset
from t3d_trl.generation import DiffusionGenerationConfig
from t3d_trl.rollout import (
    ROLLOUT_COLUMNS,
    generate_trajectories,
    push_trajectories_to_hub,
    rollout_config,
    trajectory_dataset_card,
    trajectory_dataset_card_text,
)
from t3d_trl.rollout.store import ROW_CHECKSUM_KEY, SHARD_KEYS, sha256_of, write_shard
from t3d_trl.testing import free_port, tiny_qwen3, tiny_tokenizer

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "scripts"))
import rollout_2proc  # noqa: E402  (the multi-process worker: same teacher, prompts and settings)

GEN = {"max_new_tokens": 8, "steps_per_block": 2}
TEXT_PROMPTS = ["abc", "hello world", "x", "what is 2+2?", "zz top", "a b c d e f g", "q"]
CHAT_PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "count to five please"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c?"}],
    [{"role": "user", "content": "zz"}],
]
GENERATED = [name for name in ROLLOUT_COLUMNS if name != "completion"] + ["completion"]


def teacher(**overrides):
    """The tiny teacher with EOS made likely (it replaces the token "3"), so completions end at different lengths."""
    tokenizer = tiny_tokenizer()
    model = tiny_qwen3(seed=0, **overrides)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = model.lm_head.weight[tokenizer.convert_tokens_to_ids("3")] * 1.01
    return model, tokenizer


class GenerateSpy:
    """Replaces ``model.generate`` (instance attribute) to count calls, keep their keyword arguments and optionally
    crash after some of them."""

    def __init__(self, model, crash_after: int | None = None) -> None:
        t3d_trl.patch_model(model, tiny_tokenizer())
        self.model, self.crash_after, self.calls, self.kwargs = model, crash_after, 0, []
        model.generate = self

    def __call__(self, *args, **kwargs):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.kwargs.append(kwargs)
        return type(self.model).generate(self.model, *args, **kwargs)


def rollout_rows(dataset: Dataset) -> list[dict]:
    return [{name: row[name] for name in GENERATED} for row in dataset]


def interrupted_rollout(out: Path, dataset: Dataset, batches_done: int, settings: dict = GEN, **kwargs):
    """A rollout into ``out`` killed after ``batches_done`` batches (the shards of those batches are on disk)."""
    model, tokenizer = teacher()
    GenerateSpy(model, crash_after=batches_done)
    with pytest.raises(KeyboardInterrupt):
        generate_trajectories(
            model, tokenizer, dataset, settings, batch_size=2, output_dir=out, progress=False, **kwargs
        )
    assert len(list((out / "shards").glob("batch*.jsonl"))) == batches_done


@pytest.fixture(scope="module")
def text_dataset() -> Dataset:
    return Dataset.from_dict({"prompt": TEXT_PROMPTS, "id": list(range(len(TEXT_PROMPTS)))})


@pytest.fixture(scope="module")
def reference(text_dataset):
    """An uninterrupted greedy rollout of the text prompts (batch size 2)."""
    model, tokenizer = teacher()
    return generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_rollout_format_and_order(kind):
    model, tokenizer = teacher()
    prompts = TEXT_PROMPTS if kind == "text" else CHAT_PROMPTS
    dataset = Dataset.from_dict({"prompt": prompts, "id": list(range(len(prompts))), "extra": ["e"] * len(prompts)})
    result = generate_trajectories(model, tokenizer, dataset, GEN, batch_size=3, progress=False)

    assert len(result) == len(prompts)
    assert result.column_names == ["prompt", "id", "extra", *ROLLOUT_COLUMNS]
    assert result["id"] == list(range(len(prompts))) and result["extra"] == ["e"] * len(prompts)
    lengths = set()
    for row, prompt in zip(result, prompts):
        assert row["prompt"] == prompt  # as given, in the input order
        if kind == "text":
            expected_ids = tokenizer(prompt)["input_ids"]
        else:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            expected_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert text.endswith("assistant: ")
        assert row["prompt_ids"] == expected_ids
        ids, steps = row["completion_ids"], row["step_map"]
        assert 1 <= len(ids) <= GEN["max_new_tokens"] and len(steps) == len(ids)
        assert tokenizer.pad_token_id not in ids and tokenizer.mask_token_id not in ids
        if tokenizer.eos_token_id in ids:  # cut right after the first EOS
            assert ids.index(tokenizer.eos_token_id) == len(ids) - 1
        else:
            assert len(ids) == GEN["max_new_tokens"]
        assert min(steps) == 0 and all(step >= 0 for step in steps)
        assert row["completion"] == tokenizer.decode(ids, skip_special_tokens=True)
        assert row["block_size"] == 4 and row["steps_per_block"] == 2
        assert row["nfe"] >= max(steps) + 1  # tokens after EOS in its block cost steps but are dropped
        lengths.add(len(ids))
    if kind == "text":
        assert len(lengths) > 1, "the test teacher should stop at different lengths"

    record = rollout_config(result)
    assert record["generation_config"]["steps_per_block"] == 2
    assert record["generation_config"]["max_new_tokens"] == 8
    assert record["generation_config"]["mask_token_id"] == tokenizer.mask_token_id
    assert record["batch_size"] == 3 and record["num_prompts"] == len(prompts)
    assert "model_name_or_path" in record
    # the rows are a valid trajectory dataset for the trainer's data pipeline
    prepared, stats = prepare_trajectory_dataset(result)
    assert stats["num_rows_in"] == len(prompts) and stats["tokenized_prompts"] == 0


def test_rows_equal_one_by_one(reference, text_dataset):
    model, tokenizer = teacher()
    for index in range(len(text_dataset)):
        alone = generate_trajectories(model, tokenizer, text_dataset.select([index]), GEN, batch_size=1, progress=False)
        assert rollout_rows(alone) == rollout_rows(reference.select([index])), f"row {index}"


def test_rows_equal_direct_generate(reference, text_dataset):
    """The recorded ids and steps are what ``model.generate`` gives for the prompt alone."""
    model, tokenizer = teacher()
    t3d_trl.patch_model(model, tokenizer)
    for index in (0, 4):
        prompt_ids = torch.tensor([reference[index]["prompt_ids"]])
        out = model.generate(input_ids=prompt_ids, return_dict_in_generate=True, **GEN)
        length = len(reference[index]["completion_ids"])
        assert out.sequences[0, prompt_ids.shape[1] :][:length].tolist() == reference[index]["completion_ids"]
        assert out.step_map[0, :length].tolist() == reference[index]["step_map"]
        assert int(out.nfe[0]) == reference[index]["nfe"]


def test_generation_config_forms(reference, text_dataset):
    """A DiffusionGenerationConfig overrides only the fields it sets; a dict the same."""
    model, tokenizer = teacher()
    result = generate_trajectories(
        model, tokenizer, text_dataset, DiffusionGenerationConfig(**GEN), batch_size=2, progress=False
    )
    assert rollout_rows(result) == rollout_rows(reference)
    assert rollout_config(result)["generation_config"]["mask_token_id"] == tokenizer.mask_token_id
    with pytest.raises(ValueError, match="not generation settings"):
        generate_trajectories(model, tokenizer, text_dataset, {"no_such_field": 1}, progress=False)


def test_sampling_is_reproducible(text_dataset):
    model, tokenizer = teacher()
    settings = {**GEN, "temperature": 1.0}
    first = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=3, seed=1, progress=False)
    again = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=3, seed=1, progress=False)
    other = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=3, seed=2, progress=False)
    assert rollout_rows(first) == rollout_rows(again)
    assert [r["completion_ids"] for r in first] != [r["completion_ids"] for r in other]
    assert rollout_config(first)["generation_config"]["do_sample"] is True


SAMPLED = {**GEN, "temperature": 1.0}


def test_num_generations_rows_stay_together_in_dataset_order(text_dataset):
    model, tokenizer = teacher()
    dataset = text_dataset.add_column("reference", [f"answer {i}" for i in range(len(text_dataset))])
    result = generate_trajectories(
        model, tokenizer, dataset, SAMPLED, batch_size=3, num_generations=3, seed=1, progress=False
    )
    n = len(text_dataset)
    assert len(result) == 3 * n
    assert result["sample_index"] == [0, 1, 2] * n
    assert result["id"] == [i for i in range(n) for _ in range(3)]
    assert result["reference"] == [f"answer {i}" for i in range(n) for _ in range(3)]  # kept, for SFT on references
    assert result["prompt"] == [p for p in TEXT_PROMPTS for _ in range(3)]
    groups = [result.select(range(3 * i, 3 * i + 3)) for i in range(n)]
    assert all(len(set(map(tuple, g["prompt_ids"]))) == 1 for g in groups)
    assert any(len(set(map(tuple, g["completion_ids"]))) > 1 for g in groups), "samples should differ"
    record = rollout_config(result)
    assert record["num_generations"] == 3 and record["generation_config"]["num_return_sequences"] == 3
    again = generate_trajectories(
        model, tokenizer, dataset, SAMPLED, batch_size=3, num_generations=3, seed=1, progress=False
    )
    assert rollout_rows(again) == rollout_rows(result)
    prepared, _ = prepare_trajectory_dataset(result)
    assert len(prepared) == 3 * n


def test_num_generations_uses_num_return_sequences(text_dataset):
    """``model.generate(..., num_return_sequences=n)``: one call per batch, every sample of a prompt from it."""
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    result = generate_trajectories(
        model, tokenizer, text_dataset, SAMPLED, batch_size=4, num_generations=2, progress=False
    )
    assert spy.calls == 2 and len(result) == 2 * len(text_dataset)
    assert all(kwargs["generation_config"].num_return_sequences == 2 for kwargs in spy.kwargs)


def test_num_generations_with_greedy_decoding_is_refused(text_dataset):
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    with pytest.raises(ValueError, match=r"`num_generations`=2 needs sampling.*temperature 0.*identical"):
        generate_trajectories(model, tokenizer, text_dataset, GEN, num_generations=2, progress=False)
    settings = {**SAMPLED, "num_return_sequences": 2}
    with pytest.raises(ValueError, match=r"`num_generations`=3 and the generation config's `num_return_sequences`=2"):
        generate_trajectories(model, tokenizer, text_dataset, settings, num_generations=3, progress=False)
    assert spy.calls == 0
    result = generate_trajectories(model, tokenizer, text_dataset.select([0]), settings, progress=False)
    assert result["sample_index"] == [0, 1]  # the config's num_return_sequences when num_generations is not given


def test_a_seeded_generator_is_given_to_every_generate_call(text_dataset):
    """Also when decoding greedily: the "random" remasking strategy draws from it."""
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=4, progress=False)
    assert spy.calls == 2 and all(isinstance(k["generator"], torch.Generator) for k in spy.kwargs)
    settings = {**GEN, "remasking": "random"}
    first = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=2, seed=5, progress=False)
    torch.manual_seed(123)  # the global generator is not what decides
    again = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=2, seed=5, progress=False)
    other = generate_trajectories(model, tokenizer, text_dataset, settings, batch_size=2, seed=6, progress=False)
    assert rollout_rows(first) == rollout_rows(again)
    assert [r["step_map"] for r in first] != [r["step_map"] for r in other]


# ---------------------------------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------------------------------


def test_resume_after_kill(tmp_path, reference, text_dataset):
    out = tmp_path / "rollout"
    model, tokenizer = teacher()
    spy = GenerateSpy(model, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["batch000000.jsonl", "batch000001.jsonl"]  # 7 prompts / 2 = 4 batches, 2 finished
    assert not (out / "done").exists() and not (out / "dataset").exists()
    assert json.loads((out / "rollout_config.json").read_text())["generation_config"]["steps_per_block"] == 2

    spy = GenerateSpy(model)
    resumed = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 2  # only the unfinished batches are generated
    assert rollout_rows(resumed) == rollout_rows(reference)
    assert resumed["id"] == list(range(len(text_dataset)))
    indices = [json.loads(line)["index"] for p in (out / "shards").iterdir() for line in p.read_text().splitlines()]
    assert sorted(indices) == list(range(len(text_dataset)))  # every prompt exactly once
    assert (out / "done").exists()
    assert rollout_rows(load_from_disk(str(out / "dataset"))) == rollout_rows(reference)
    assert rollout_config(load_from_disk(str(out / "dataset")))["fingerprint"] == rollout_config(resumed)["fingerprint"]

    spy = GenerateSpy(model)
    again = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 0 and rollout_rows(again) == rollout_rows(reference)


def test_resume_reads_rows_back(tmp_path, text_dataset):
    """Finished rows come from disk, not from recomputation."""
    out = tmp_path / "rollout"
    model, tokenizer = teacher()
    GenerateSpy(model, crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    shard = out / "shards" / "batch000000.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    rows[0]["nfe"] = 999
    write_shard(out, 0, [{key: row[key] for key in SHARD_KEYS} for row in rows])  # a valid shard, with its checksums
    GenerateSpy(model)
    resumed = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert resumed[rows[0]["index"]]["nfe"] == 999


def test_resume_refuses_other_settings(tmp_path, text_dataset):
    out = tmp_path / "rollout"
    model, tokenizer = teacher()
    GenerateSpy(model, crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    spy = GenerateSpy(model)
    with pytest.raises(ValueError, match=r"other settings.*steps_per_block: 2 -> 4"):
        generate_trajectories(
            model, tokenizer, text_dataset, {**GEN, "steps_per_block": 4}, batch_size=2, output_dir=out, progress=False
        )
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=3, output_dir=out, progress=False)
    changed = Dataset.from_dict({"prompt": TEXT_PROMPTS[:-1] + ["other"]})
    with pytest.raises(ValueError, match="other settings.*prompts_sha256"):
        generate_trajectories(model, tokenizer, changed, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 0
    assert not (out / "done").exists() and not (out / "dataset").exists()


def test_resume_with_samples(tmp_path, text_dataset):
    uninterrupted = generate_trajectories(
        *teacher(), text_dataset, SAMPLED, batch_size=2, num_generations=2, seed=4, progress=False
    )
    out = tmp_path / "rollout"
    interrupted_rollout(out, text_dataset, 2, SAMPLED, num_generations=2, seed=4)
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    resumed = generate_trajectories(
        model,
        tokenizer,
        text_dataset,
        SAMPLED,
        batch_size=2,
        num_generations=2,
        seed=4,
        output_dir=out,
        progress=False,
    )
    assert spy.calls == 2 and rollout_rows(resumed) == rollout_rows(uninterrupted)
    with pytest.raises(ValueError, match="other settings.*num_generations: 2 -> 3"):
        generate_trajectories(
            model,
            tokenizer,
            text_dataset,
            SAMPLED,
            batch_size=2,
            num_generations=3,
            seed=4,
            output_dir=out,
            progress=False,
        )


def test_weights_sha256_sees_every_change():
    from t3d_trl.rollout.loop import weights_sha256

    model, _ = teacher()
    digest = weights_sha256(model)
    assert digest == weights_sha256(teacher()[0]) and len(digest) == 64
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-12
    assert weights_sha256(model) != digest
    assert weights_sha256(model.to(torch.bfloat16)) != weights_sha256(model.to(torch.float32))


def test_resume_refuses_other_weights(tmp_path, reference, text_dataset):
    out = tmp_path / "rollout"
    interrupted_rollout(out, text_dataset, 2)
    model, tokenizer = teacher()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1e-6  # same name, config and dtype
    spy = GenerateSpy(model)
    with pytest.raises(
        ValueError,
        match=r"the teacher's weights are not those of the interrupted run.*"
        r"model_weights_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'.*delete .* to start over",
    ):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 0 and not (out / "done").exists()

    model, tokenizer = teacher()  # the weights of the interrupted run
    spy = GenerateSpy(model)
    resumed = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 2 and rollout_rows(resumed) == rollout_rows(reference)
    keys = [(r["index"], r["sample_index"]) for p in (out / "shards").iterdir() for r in map(json.loads, p.open())]
    assert sorted(keys) == [(i, 0) for i in range(len(text_dataset))]  # every prompt exactly once


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-25])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10:14] = b"\xff\xfe\x00\x81"
    path.write_bytes(bytes(data))


def _rewrite(change, checksum: bool = True):
    """Rewrite a shard's rows with ``change``; with ``checksum``, the rows get checksums of their new content (as
    rows t3d-trl wrote from other data would have), otherwise they keep the old ones (rows edited by hand)."""

    def apply(path: Path) -> None:
        rows = change([json.loads(line) for line in path.read_text().splitlines()])
        if checksum:
            rows = [{**r, ROW_CHECKSUM_KEY: sha256_of({k: r[k] for k in SHARD_KEYS if k in r})} for r in rows]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    return apply


DAMAGE = {
    "truncated": (_truncate, r"line 2 is not valid JSON"),
    "garbled": (_garble, r"it is not UTF-8 text"),
    "not an object": (lambda path: path.write_text("[1, 2]\n"), r"line 1: it holds a JSON list, not an object"),
    "missing field": (_rewrite(lambda rows: [{k: v for k, v in r.items() if k != "step_map"} for r in rows]),
                      r"line 1: it lacks \['step_map'\]"),
    "wrong type": (_rewrite(lambda rows: [{**r, "completion_ids": [str(i) for i in r["completion_ids"]]} for r in rows]),
                   r"line 1: `completion_ids` must be a list of integers"),
    "lengths": (_rewrite(lambda rows: [{**r, "step_map": r["step_map"][:-1]} for r in rows]),
                r"line 1: `step_map` has \d+ entries for \d+ completion tokens"),
    "wrong rows": (_rewrite(lambda rows: rows[:1]), r"it holds the rows \(index, sample_index\) \[\(\d, 0\)\] but its batch"),
    "other prompt": (_rewrite(lambda rows: [{**r, "prompt_ids": r["prompt_ids"] + [5]} for r in rows]),
                     r"row \d was made from other prompt ids"),
    "edited tokens": (_rewrite(lambda rows: [{**r, "completion_ids": [r["completion_ids"][0] + 1, *r["completion_ids"][1:]]} for r in rows], False),
                      r"line 1: its fields no longer match their `sha256` checksum \(the tokens, steps or indices"),
    "no checksum": (_rewrite(lambda rows: [{k: r[k] for k in SHARD_KEYS} for r in rows], False),
                    r"line 1: it has no `sha256` checksum"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_shard_is_named_with_how_to_recover(tmp_path, reference, text_dataset, damage):
    out = tmp_path / "rollout"
    interrupted_rollout(out, text_dataset, 2)
    shard = out / "shards" / "batch000001.jsonl"
    corrupt, problem = DAMAGE[damage]
    corrupt(shard)
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    with pytest.raises(ValueError, match=rf"Shard {shard} is damaged: ({problem}).*Delete it .* and rerun"):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 0
    shard.unlink()  # the recovery the message gives
    resumed = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 3 and rollout_rows(resumed) == rollout_rows(reference)


def test_a_finished_rollout_whose_shard_tokens_were_edited_is_refused(tmp_path, text_dataset):
    out = tmp_path / "rollout"
    model, tokenizer = teacher()
    generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert (out / "done").exists()
    shard = out / "shards" / "batch000002.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    rows[-1]["completion_ids"][0] = (rows[-1]["completion_ids"][0] + 1) % len(tokenizer)
    shard.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spy = GenerateSpy(model)
    with pytest.raises(ValueError, match=rf"Shard {shard} is damaged: line {len(rows)}: its fields no longer match"):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert spy.calls == 0


def test_a_rollout_directory_without_its_done_marker_is_not_loaded_as_training_data(tmp_path, text_dataset):
    from t3d_trl.local_datasets import load_local_dataset

    out = tmp_path / "rollout"
    model, tokenizer = teacher()
    expected = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    assert len(load_local_dataset(out)) == len(load_local_dataset(out / "dataset")) == len(expected)
    marker = (out / "done").read_text()
    (out / "done").unlink()  # e.g. killed while saving the dataset: dataset/ may be partial
    for path in (out, out / "dataset"):
        with pytest.raises(
            ValueError,
            match=rf"{out} is an unfinished rollout directory \(no `done` marker; its "
            r"`dataset/` may be partial\).*rerun the same",
        ):
            load_local_dataset(path)
    (out / "done").write_text(marker)
    Dataset.from_dict(expected[:3]).save_to_disk(str(tmp_path / "short"))
    (out / "dataset").rename(tmp_path / "full")
    (tmp_path / "short").rename(out / "dataset")
    with pytest.raises(ValueError, match=rf"holds 3 rows but its rollout finished with {len(expected)}"):
        load_local_dataset(out)


def test_a_shard_of_no_batch_and_a_damaged_record_are_named(tmp_path, text_dataset):
    out = tmp_path / "rollout"
    interrupted_rollout(out, text_dataset, 1)
    stray = out / "shards" / "batch000009.jsonl"
    stray.write_text("")
    model, tokenizer = teacher()
    with pytest.raises(
        ValueError,
        match=rf"Shard {stray} is damaged: this rollout has 4 batches, so there is no "
        "batch 9. Delete it",
    ):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)
    stray.unlink()
    (out / "rollout_config.json").write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=r"rollout_config.json is damaged: it is not valid JSON.*delete the directory"):
        generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=2, output_dir=out, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_column", r"no `prompt` column .*columns: \['question'\]"),
        ("empty", "dataset is empty"),
        ("max_prompt_length", r"Row 1: the prompt has 11 tokens, over max_prompt_length=10"),
        ("position_limit", r"Row 1: the prompt \(11 tokens\) plus max_new_tokens=8.*needs 20 positions.*supports 16"),
    ],
)
def test_bad_input_is_refused_before_generation(tmp_path, case, match):
    model, tokenizer = teacher(max_position_embeddings=16 if case == "position_limit" else 256)
    spy = GenerateSpy(model)
    kwargs = {}
    dataset = Dataset.from_dict({"prompt": TEXT_PROMPTS})
    if case == "missing_column":
        dataset = Dataset.from_dict({"question": TEXT_PROMPTS})
    elif case == "empty":
        dataset = Dataset.from_dict({"prompt": []})
    elif case == "max_prompt_length":
        kwargs["max_prompt_length"] = 10
    out = tmp_path / "rollout"
    with pytest.raises(ValueError, match=match):
        generate_trajectories(model, tokenizer, dataset, GEN, output_dir=out, progress=False, **kwargs)
    assert spy.calls == 0
    assert not (out / "done").exists() and not (out / "dataset").exists()


def test_list_of_dicts_is_a_dataset(reference):
    model, tokenizer = teacher()
    rows = [{"prompt": prompt, "id": index} for index, prompt in enumerate(TEXT_PROMPTS)]
    result = generate_trajectories(model, tokenizer, rows, GEN, batch_size=2, progress=False)
    assert rollout_rows(result) == rollout_rows(reference) and result["id"] == reference["id"]


@pytest.mark.parametrize(
    "dataset, error, match",
    [
        ([{"prompt": "a"}, "b"], TypeError, r"Row 1 of `dataset` is a str, not a dict"),
        ([{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}], ValueError, "one type"),
        ([], ValueError, r"empty \(an empty list\)"),
        ({"prompt": ["a"]}, TypeError, r"must be a datasets.Dataset or a list of dicts \(one per prompt\), got dict"),
        ("iterable", TypeError, "IterableDataset.*Materialise it"),
        ("dict", TypeError, r"DatasetDict with the splits \['train'\]; pass one split"),
        (Dataset.from_dict({"prompt": ["a", "b", None]}), ValueError, "Row 2: `prompt` must be text or a list"),
        (Dataset.from_dict({"prompt": [3]}), ValueError, "Row 0: `prompt` must be text or a list of chat messages"),
        (Dataset.from_dict({"prompt": ["a", ""]}), ValueError, "Row 1: the prompt is empty after tokenisation"),
    ],
)
def test_bad_datasets_are_refused_before_generation(dataset, error, match):
    from datasets import DatasetDict, IterableDataset

    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    if dataset == "iterable":
        dataset = IterableDataset.from_generator(lambda: iter([{"prompt": "a"}]))
    elif dataset == "dict":
        dataset = DatasetDict({"train": Dataset.from_dict({"prompt": ["a"]})})
    with pytest.raises(error, match=match):
        generate_trajectories(model, tokenizer, dataset, GEN, progress=False)
    assert spy.calls == 0


@pytest.mark.parametrize(
    "argument, value, match",
    [
        ("batch_size", 0, r"`batch_size` must be a positive integer, got 0"),
        ("batch_size", 2.0, r"`batch_size` must be a positive integer, got 2.0"),
        ("batch_size", float("nan"), r"`batch_size` must be a positive integer, got nan"),
        ("batch_size", True, r"`batch_size` must be a positive integer, got True"),
        ("batch_size", "2", r"`batch_size` must be a positive integer, got '2'"),
        ("num_generations", 0, r"`num_generations` must be a positive integer or None, got 0"),
        ("num_generations", 1.5, r"`num_generations` must be a positive integer or None, got 1.5"),
        ("seed", -1, r"`seed` must be an integer >= 0, got -1"),
        ("seed", 0.5, r"`seed` must be an integer >= 0, got 0.5"),
        ("max_prompt_length", 0, r"`max_prompt_length` must be a positive integer or None, got 0"),
        ("max_prompt_length", float("inf"), r"`max_prompt_length` must be a positive integer or None, got inf"),
        ("prompt_column", 3, r"`prompt_column` must be a column name \(str\), got 3"),
        ("output_dir", "FILE", r"`output_dir` .* is a file, not a directory"),
        ("output_dir", "FILE/sub", r"`output_dir` .* is inside .*, which is a file"),
        ("output_dir", 3, r"`output_dir` must be a path"),
    ],
)
def test_bad_arguments_are_refused_before_generation(tmp_path, text_dataset, argument, value, match):
    model, tokenizer = teacher()
    spy = GenerateSpy(model)
    if isinstance(value, str) and value.startswith("FILE"):
        (tmp_path / "FILE").write_text("not a directory")
        value = str(tmp_path / value)
    with pytest.raises((ValueError, TypeError), match=match):
        generate_trajectories(model, tokenizer, text_dataset, GEN, progress=False, **{argument: value})
    assert spy.calls == 0
    assert sorted(path.name for path in tmp_path.iterdir()) in ([], ["FILE"])


def test_numpy_integers_are_integers(text_dataset, reference):
    import numpy as np

    model, tokenizer = teacher()
    result = generate_trajectories(model, tokenizer, text_dataset, GEN, batch_size=np.int64(2), progress=False)
    assert rollout_rows(result) == rollout_rows(reference)


def test_prompt_ids_outside_the_vocabulary_are_refused(text_dataset):
    """The tokenizer has 48 ids, the model 40 embeddings: " " (id 40) of "hello world" (row 1) has none."""
    model, tokenizer = teacher(vocab_size=40)
    spy = GenerateSpy(model)
    assert tokenizer.convert_tokens_to_ids(" ") == 40
    with pytest.raises(
        ValueError,
        match=r"Row 1: the prompt has the token id 4\d, outside the teacher's vocabulary "
        r"of 40 embeddings \(ids 0 to 39\)",
    ):
        generate_trajectories(model, tokenizer, text_dataset, GEN, progress=False)
    with pytest.raises(ValueError, match=r"mask_token_id 45 is outside the teacher's vocabulary of 40"):
        generate_trajectories(model, tokenizer, [{"prompt": "abc"}], {**GEN, "mask_token_id": 45}, progress=False)
    assert spy.calls == 0


# ---------------------------------------------------------------------------------------------------------------------
# Multi-process
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_rollout_equals_one_process(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(TESTS / "scripts" / "rollout_2proc.py"), str(tmp_path),
    ]  # fmt: skip
    # no GPU, no ACCELERATE_USE_CPU: generate_trajectories must see the two CPU processes by itself
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    path = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=TESTS.parent)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert [(tmp_path / f"world_size_rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]

    model, tokenizer, dataset = rollout_2proc.build()
    runs = (
        ("greedy", rollout_2proc.GREEDY, 0, 1),
        ("sampled", rollout_2proc.SAMPLED, rollout_2proc.SEED, rollout_2proc.NUM_GENERATIONS),
    )
    for name, settings, seed, samples in runs:
        single = generate_trajectories(
            model,
            tokenizer,
            dataset,
            settings,
            batch_size=rollout_2proc.BATCH_SIZE,
            seed=seed,
            num_generations=samples,
            progress=False,
        ).to_list()
        assert len(single) == len(dataset) * samples
        for rank in (0, 1):  # every process returns the whole dataset, identical to a 1-process run
            assert json.loads((tmp_path / f"{name}_rank{rank}.json").read_text()) == single, (name, rank)
    shards = tmp_path / "greedy_dir" / "shards"
    assert len(list(shards.iterdir())) == 4 and (tmp_path / "greedy_dir" / "done").exists()
    assert load_from_disk(str(tmp_path / "greedy_dir" / "dataset")).to_list() == json.loads(
        (tmp_path / "greedy_rank0.json").read_text()
    )


# ---------------------------------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------------------------------


def test_dataset_card_text(reference):
    text = trajectory_dataset_card_text(reference, "me/trajectories")
    for column in ("prompt", *ROLLOUT_COLUMNS, "id"):
        assert f"`{column}`" in text
    assert "`steps_per_block`: `2`" in text and "`max_new_tokens`: `8`" in text
    assert "`num_generations`: `1`" in text
    assert '"remasking": "low_confidence_static"' in text  # the full config
    assert 'load_dataset("me/trajectories"' in text
    assert f"rows: {len(reference)}" in text
    card = trajectory_dataset_card(reference, "me/trajectories")
    assert "t3d-trl" in card.data.tags and card.text.strip().startswith("# Teacher trajectories")


def test_push_trajectories_to_hub_offline(monkeypatch, reference):
    from huggingface_hub import DatasetCard, DatasetCardData

    calls = {}
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: calls.setdefault("dataset", (repo_id, kw)))
    existing = DatasetCard(f"---\n{DatasetCardData(tags=['mine'], license='mit').to_yaml()}\n---\n\nold text")
    monkeypatch.setattr(DatasetCard, "load", classmethod(lambda cls, *a, **kw: existing))

    def fake_push(self, repo_id, **kw):
        calls["card"] = (repo_id, kw, str(self))
        return "commit"

    monkeypatch.setattr(DatasetCard, "push_to_hub", fake_push)
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: calls.setdefault("upload", kw))
    assert push_trajectories_to_hub(reference, "me/traj", private=True, token="x") == "commit"
    assert calls["dataset"] == ("me/traj", {"private": True, "token": "x"})
    repo_id, kwargs, content = calls["card"]
    assert repo_id == "me/traj" and kwargs["repo_type"] == "dataset" and kwargs["token"] == "x"
    assert "license: mit" in content and "- mine" in content and "- t3d-trl" in content
    assert "old text" not in content and "## Teacher settings" in content
    upload = calls["upload"]
    assert upload["path_in_repo"] == "rollout_config.json" and upload["repo_type"] == "dataset"
    assert json.loads(upload["path_or_fileobj"]) == rollout_config(reference)
