"""Tests for t3d_trl.data: trajectory dataset validation, tokenisation and the mask-token check."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config

from t3d_trl.data import (
    COMPLETION_IDS,
    EXAMPLE_INDEX,
    PROMPT_IDS,
    STEP_MAP,
    prepare_trajectory_dataset,
    validate_mask_token,
)

WORDS = ["<pad>", "<eos>", "<mask>", "<unk>", "user:", "assistant:", "what", "is", "two", "plus", "four", "six", "."]


def _tokenizer(mask: bool = True) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
    if mask:
        special["mask_token"] = "<mask>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tokenizer


def _rows(**columns) -> Dataset:
    base = {
        PROMPT_IDS: [[4, 6, 7], [4, 6, 8, 9]],
        COMPLETION_IDS: [[10, 12, 1], [11, 12, 1, 1]],
        STEP_MAP: [[0, 1, 1], [0, 0, 1, 2]],
        "block_size": [2, 2],
    }
    base.update(columns)
    return Dataset.from_dict(base)


def test_valid_ids_pass_untouched_with_example_index():
    dataset, stats = prepare_trajectory_dataset(_rows())
    assert dataset[PROMPT_IDS] == [[4, 6, 7], [4, 6, 8, 9]]
    assert dataset[COMPLETION_IDS] == [[10, 12, 1], [11, 12, 1, 1]]
    assert dataset[EXAMPLE_INDEX] == [0, 1]
    assert stats["num_rows_in"] == stats["num_rows_out"] == 2
    assert stats["dropped_empty"] == stats["truncated_prompts"] == stats["truncated_completions"] == 0
    assert not any(name.startswith("_t3d") for name in dataset.column_names)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"missing `completion_ids` \(or text `completion`\).*step_map"):
        prepare_trajectory_dataset(Dataset.from_dict({PROMPT_IDS: [[1]], STEP_MAP: [[0]]}), block_size=2)
    with pytest.raises(ValueError, match="generate_trajectories"):
        prepare_trajectory_dataset(Dataset.from_dict({"prompt": ["what is two"], "completion": ["four"]}), _tokenizer())
    with pytest.raises(ValueError, match="block_size"):
        prepare_trajectory_dataset(_rows().remove_columns("block_size"))
    with pytest.raises(ValueError, match="processing_class"):
        prepare_trajectory_dataset(
            Dataset.from_dict({"prompt": ["two"], COMPLETION_IDS: [[1]], STEP_MAP: [[0]]}), block_size=2
        )


def test_step_map_length_mismatch_names_the_row():
    with pytest.raises(ValueError, match=r"row 1 .*len\(step_map\)=3 != len\(completion_ids\)=4"):
        prepare_trajectory_dataset(_rows(**{STEP_MAP: [[0, 1, 1], [0, 0, 1]]}))


def test_negative_steps_name_the_row():
    with pytest.raises(ValueError, match="row 0 .*negative step -1"):
        prepare_trajectory_dataset(_rows(**{STEP_MAP: [[0, -1, 1], [0, 0, 1, 2]]}))


def test_out_of_order_steps_use_absolute_block_alignment():
    # Completion tokens at positions P.. with teacher blocks of 2: with P = 2 the blocks are {t0, t1}, {t2, t3}
    # and steps [1, 0, 2, 3] are ordered block by block; with P = 3 they are {t0}, {t1, t2}, {t3} and t1 (step 0)
    # comes after t0 (step 1).
    ok = Dataset.from_dict({PROMPT_IDS: [[4, 6]], COMPLETION_IDS: [[7, 8, 9, 1]], STEP_MAP: [[1, 0, 2, 3]]})
    dataset, _ = prepare_trajectory_dataset(ok, block_size=2)
    assert dataset[STEP_MAP] == [[1, 0, 2, 3]]
    bad = Dataset.from_dict(
        {
            PROMPT_IDS: [[4, 6], [4, 6, 7]],
            COMPLETION_IDS: [[7, 8, 9, 1], [7, 8, 9, 1]],
            STEP_MAP: [[1, 0, 2, 3], [1, 0, 2, 3]],
        }
    )
    with pytest.raises(ValueError, match=r"row 1 .*out of order: teacher block 2 .*step 0, before step 1"):
        prepare_trajectory_dataset(bad, block_size=2)
    # The block_size column wins over the argument.
    with pytest.raises(ValueError, match="row 0"):
        prepare_trajectory_dataset(ok.add_column("block_size", [3]), block_size=2)


def test_empty_completions_are_dropped_counted_and_logged(caplog):
    rows = _rows(
        **{
            PROMPT_IDS: [[4], [5], [6]],
            COMPLETION_IDS: [[], [7, 1], []],
            STEP_MAP: [[], [0, 1], []],  # P = 1, blocks of 2: the two tokens lie in different teacher blocks
            "block_size": [2, 2, 2],
        }
    )
    with caplog.at_level(logging.WARNING, logger="t3d_trl.data"):
        dataset, stats = prepare_trajectory_dataset(rows)
    assert stats["dropped_empty"] == 2 and stats["num_rows_out"] == 1
    assert dataset[EXAMPLE_INDEX] == [1]  # the original row index is kept
    assert "empty completion" in caplog.text


def test_long_completions_keep_start_or_error(caplog):
    rows = _rows()
    with caplog.at_level(logging.WARNING, logger="t3d_trl.data"):
        dataset, stats = prepare_trajectory_dataset(rows, max_completion_length=3)
    assert stats["truncated_completions"] == 1
    assert dataset[COMPLETION_IDS] == [[10, 12, 1], [11, 12, 1]]
    assert dataset[STEP_MAP] == [[0, 1, 1], [0, 0, 1]]
    assert "Truncating 1 completion" in caplog.text
    with pytest.raises(ValueError, match=r"row 1 .*4 tokens > max_completion_length=3"):
        prepare_trajectory_dataset(rows, max_completion_length=3, truncation="error")
    with pytest.raises(ValueError, match="truncation"):
        prepare_trajectory_dataset(rows, truncation="keep_end")


def test_left_truncation_keeps_the_block_grid_under_the_step_map():
    # P = 4, B = 2 on the absolute grid: a limit of 3 cuts a whole block (2 tokens), never 1, which would move every
    # completion token into another teacher block
    dataset, stats = prepare_trajectory_dataset(_rows(), max_prompt_length=3)
    assert stats["truncated_prompts"] == 1 and stats["dropped_long_prompts"] == 0
    assert dataset[PROMPT_IDS] == [[4, 6, 7], [8, 9]]
    # fed back, the cut rows pass the same validation: their step map is still the teacher's schedule on the grid
    again, _ = prepare_trajectory_dataset(dataset)
    assert again[PROMPT_IDS] == dataset[PROMPT_IDS] and again[STEP_MAP] == dataset[STEP_MAP]
    # the one-token cut the old truncation made is exactly what validation refuses
    shifted = _rows(**{PROMPT_IDS: [[4, 6, 7], [6, 8, 9]]})
    with pytest.raises(ValueError, match="steps out of order"):
        prepare_trajectory_dataset(shifted)


def test_left_truncation_keeps_the_training_grid_too_or_refuses_the_row():
    # training blocks of 4 over teacher blocks of 2: cuts are whole blocks of lcm(2, 4) = 4, so a prompt of 4 tokens
    # cannot keep any within a limit of 3: the row is dropped and counted, never cut off its grid
    dataset, stats = prepare_trajectory_dataset(_rows(), max_prompt_length=3, training_block_size=4)
    assert stats["dropped_long_prompts"] == 1 and stats["num_rows_out"] == 1
    assert dataset[PROMPT_IDS] == [[4, 6, 7]]


def test_left_truncation_on_the_response_grid_cuts_just_the_excess():
    # blocks start at the completion on the response grid: the prompt's length does not move them
    row = {PROMPT_IDS: [[4, 6, 8, 9]], COMPLETION_IDS: [[11, 12, 1, 1]], STEP_MAP: [[0, 0, 1, 2]], "block_size": [2]}
    dataset, stats = prepare_trajectory_dataset(_rows(**row), max_prompt_length=3, grid="response")
    assert stats["truncated_prompts"] == 1
    assert dataset[PROMPT_IDS] == [[6, 8, 9]]


def test_text_rows_are_tokenised_and_id_rows_untouched():
    tokenizer = _tokenizer()
    # Chat prompt → chat template with the generation prompt; completion ids given → never re-tokenised.
    chat = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "what is two plus four"}]],
            "completion": ["six ."],
            COMPLETION_IDS: [[11, 12, 12, 1]],  # deliberately not the tokenisation of "six ."
            STEP_MAP: [[0, 1, 1, 2]],  # P = 7, blocks of 4: {t0} then {t1, t2, t3}
        }
    )
    dataset, stats = prepare_trajectory_dataset(chat, tokenizer, block_size=4)
    assert dataset[PROMPT_IDS] == [[4, 6, 7, 8, 9, 10, 5]]  # "user: what is two plus four assistant:"
    assert dataset[COMPLETION_IDS] == [[11, 12, 12, 1]]
    assert stats["tokenized_prompts"] == 1 and stats["tokenized_completions"] == 0
    # Text prompt and completion; prompt ids given → untouched, completion tokenised (no special tokens).
    text = Dataset.from_dict(
        {"prompt": ["what is two plus four"], PROMPT_IDS: [[7, 7, 7]], "completion": ["six ."], STEP_MAP: [[0, 1]]}
    )
    dataset, stats = prepare_trajectory_dataset(text, tokenizer, block_size=4)
    assert dataset[PROMPT_IDS] == [[7, 7, 7]]
    assert dataset[COMPLETION_IDS] == [[11, 12]]
    assert stats["tokenized_prompts"] == 0 and stats["tokenized_completions"] == 1
    # Plain text prompt, tokenised.
    plain = Dataset.from_dict({"prompt": ["two plus four"], "completion": ["six"], STEP_MAP: [[0]]})
    dataset, _ = prepare_trajectory_dataset(plain, tokenizer, block_size=4)
    assert dataset[PROMPT_IDS] == [[8, 9, 10]] and dataset[COMPLETION_IDS] == [[11]]
    # A step_map that no longer matches the re-tokenised completion is caught.
    with pytest.raises(ValueError, match="row 0 .*len\\(step_map\\)=1 != len\\(completion_ids\\)=2"):
        prepare_trajectory_dataset(plain.map(lambda row: {"completion": "six ."}), tokenizer, block_size=4)


def test_validate_mask_token():
    assert validate_mask_token(_tokenizer()) == 2
    config = Qwen3Config(
        vocab_size=13,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=8,
    )
    config.mask_token_id = 12
    assert validate_mask_token(_tokenizer(mask=False), config) == 12
    assert validate_mask_token(None, config) == 12
    with pytest.raises(ValueError, match=r"add_special_tokens\(\{'mask_token': '<\|MASK\|>'\}\).*mask_token_id"):
        validate_mask_token(_tokenizer(mask=False))
    config.vocab_size = 2
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        validate_mask_token(_tokenizer(), config)


def test_plain_rows_for_random_mask_objectives():
    # Rows without step_map (a dataset's reference answers) are accepted when the objective ignores the steps: the
    # completion is tokenised with EOS at its end (a reference answer is finished) and gets a left-to-right step map.
    tokenizer = _tokenizer()
    plain = Dataset.from_dict({"prompt": ["what is two plus four"], "completion": ["six ."]})
    dataset, _ = prepare_trajectory_dataset(plain, tokenizer, require_step_map=False, eos_token_id=1, block_size=4)
    assert dataset[COMPLETION_IDS] == [[11, 12, 1]] and dataset[STEP_MAP] == [[0, 1, 2]]
    with pytest.raises(ValueError, match="step_map"):  # trajectory objectives do need the teacher's steps
        prepare_trajectory_dataset(plain, tokenizer, block_size=4)


def test_rows_are_checked_against_the_teachers_schedule():
    # blocks of 2 after a 2-token prompt (absolute grid): {t0, t1}, {t2, t3}, {t4}
    good = _rows(
        **{PROMPT_IDS: [[4, 6]], COMPLETION_IDS: [[7, 8, 9, 10, 1]], STEP_MAP: [[1, 0, 2, 3, 4]], "block_size": [2]}
    )
    prepare_trajectory_dataset(good)
    cases = {
        "starts at step 3, not 2": [1, 0, 3, 4, 5],  # a gap between two complete blocks
        "spans steps 0..2": [2, 0, 3, 4, 5],  # 3 steps for a block that takes at most steps_per_block = 2
        "before step 1 of the previous block": [1, 0, 0, 2, 3],
    }
    for message, steps in cases.items():
        with pytest.raises(ValueError, match=message):
            prepare_trajectory_dataset(good.map(lambda row, s=steps: {STEP_MAP: s}).add_column("steps_per_block", [2]))
    # the response grid (bidirectional teachers) puts the blocks at the completion: {t0, t1}, {t2, t3}, {t4}
    shifted = _rows(
        **{PROMPT_IDS: [[4, 6, 7]], COMPLETION_IDS: [[7, 8, 9, 10, 1]], STEP_MAP: [[1, 0, 2, 3, 4]], "block_size": [2]}
    )
    prepare_trajectory_dataset(shifted, grid="response")
    with pytest.raises(ValueError, match="out of order"):
        prepare_trajectory_dataset(shifted)  # on the absolute grid t0 is alone in its block, and t1 comes first


def test_ids_must_be_integers_in_the_vocabulary():
    # one float makes Arrow store the whole column as floats: every row is refused, the first one named
    with pytest.raises(ValueError, match=r"row 0 .*completion_ids holds 10.0 \(float\).*2 row\(s\)"):
        prepare_trajectory_dataset(_rows(**{COMPLETION_IDS: [[10, 12, 1], [11, 12, 2.5, 1]]}))
    with pytest.raises(ValueError, match=r"row 0 .*prompt_ids holds id 99, outside the vocabulary \[0, 13\)"):
        prepare_trajectory_dataset(_rows(**{PROMPT_IDS: [[4, 6, 99], [4, 6, 8, 9]]}), vocab_size=13)


def test_lists_are_accepted_and_streams_refused_in_words():
    rows = [{PROMPT_IDS: [4, 6, 7], COMPLETION_IDS: [10, 12, 1], STEP_MAP: [0, 1, 1], "block_size": 2}]
    dataset, _ = prepare_trajectory_dataset(rows)
    assert len(dataset) == 1
    with pytest.raises(ValueError, match="empty"):
        prepare_trajectory_dataset([])
    with pytest.raises(TypeError, match="IterableDataset is not supported"):
        prepare_trajectory_dataset(Dataset.from_list(rows).to_iterable_dataset())


def test_completions_without_eos_are_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="t3d_trl.data"):
        _, stats = prepare_trajectory_dataset(_rows(**{COMPLETION_IDS: [[10, 12, 1], [11, 12, 9, 9]]}), eos_token_id=1)
    assert stats["completions_without_eos"] == 1
    assert "1 of 2 completions end without EOS" in caplog.text


def test_completion_ids_holding_the_mask_token_are_refused():
    rows = _rows(**{COMPLETION_IDS: [[10, 12, 1], [11, 2, 1, 1]]})  # id 2 is <mask>
    with pytest.raises(ValueError, match=r"row 1 .*holds the mask token \(id 2\) at completion token 1"):
        prepare_trajectory_dataset(rows, mask_token_id=2)
    prepare_trajectory_dataset(rows)  # without the model's mask id nothing is known about it


def test_completion_text_that_tokenises_to_the_mask_token_is_refused():
    tokenizer = _tokenizer()
    text = Dataset.from_dict({"prompt": ["two plus four"], "completion": ["six <mask> ."], STEP_MAP: [[0, 1, 2]]})
    with pytest.raises(ValueError, match=r"row 0 .*holds the mask token \(id 2\) at completion token 1.*text"):
        prepare_trajectory_dataset(text, tokenizer, block_size=4, mask_token_id=tokenizer.mask_token_id)


def test_duplicate_example_index_values_are_refused():
    rows = _rows(**{EXAMPLE_INDEX: [5, 5]})
    with pytest.raises(ValueError, match=r"`example_index` column repeats values .*5 at rows 0 and 1.*remove_columns"):
        prepare_trajectory_dataset(rows)
    with pytest.raises(ValueError, match=r"`example_index` column must hold integers, got 0.5"):
        prepare_trajectory_dataset(_rows(**{EXAMPLE_INDEX: [0.5, 1.5]}))
    dataset, _ = prepare_trajectory_dataset(_rows(**{EXAMPLE_INDEX: [7, 3]}))
    assert dataset[EXAMPLE_INDEX] == [7, 3]  # distinct given values are kept
