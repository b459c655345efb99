"""Tests of t3d_trl.evaluation.runner with a fake diffusion model and a tiny character-level tokenizer."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from t3d_trl.evaluation import (
    CODE_EXECUTION_ENV_VAR,
    DecodingSetting,
    EvalResult,
    evaluate_few_step,
    load_eval_dataset,
    read_json,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SPECIALS = ["<pad>", "<eos>", "<mask>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_NEW_TOKENS = 64


def make_tokenizer(texts):
    """Character-level tokenizer over ASCII plus every character of ``texts``."""
    chars = sorted({chr(c) for c in range(32, 127)} | {"\n", "\t"} | {ch for t in texts for ch in t})
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        mask_token="<mask>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


class FakeDiffusionLM:
    """Deterministic stand-in for a model patched with t3d_trl.generation.

    For each prompt it "generates" the completion registered for the first key found in the prompt, followed by
    EOS and padding; it spends ``ceil(new_tokens / block_size) * steps`` forwards on a sequence, where ``steps`` is
    ``steps_per_block`` for static decoding and half of it (at least 1) with a confidence threshold.
    """

    device = torch.device("cpu")

    def __init__(self, tokenizer, completions):
        self.tokenizer = tokenizer
        self.completions = completions
        self.calls = []
        self.eval_called = False

    def eval(self):
        self.eval_called = True
        return self

    def generate(self, **kwargs):
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
        input_ids, attention_mask = kwargs["input_ids"], kwargs["attention_mask"]
        block_size, steps_per_block = kwargs["block_size"], kwargs["steps_per_block"]
        confidence_threshold = kwargs.get("confidence_threshold")
        max_new_tokens = kwargs["max_new_tokens"]
        assert kwargs["return_dict_in_generate"] is True
        tok = self.tokenizer
        rows, nfes = [], []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tok.decode(ids[mask.bool()].tolist())
            completion = next(c for key, c in self.completions.items() if key in prompt)
            new = tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id]
            new = new[:max_new_tokens]
            steps = steps_per_block if confidence_threshold is None else max(1, steps_per_block // 2)
            nfes.append(math.ceil(len(new) / block_size) * steps)
            rows.append(new + [tok.pad_token_id] * (max_new_tokens - len(new)))
        sequences = torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)
        return SimpleNamespace(sequences=sequences, nfe=torch.tensor(nfes), step_map=None)


# GSM8K fixture: question key -> (completion, correct?)
GSM8K_COMPLETIONS = {
    "Janet": ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is \\boxed{18}.", True),
    "robe": ("2 + 1 = 3 bolts in total. The answer is 3", True),
    # Longer than MAX_NEW_TOKENS: cut before its EOS (and before the right answer, 70000).
    "Josh": ("The house cost 80000 + 50000 = 130000 and is now worth 200000, so the profit is 70000.", False),
    "James": ("He runs 3 * 3 * 60 = 560 meters. \\boxed{560}", False),
}


@pytest.fixture
def gsm8k():
    return load_eval_dataset("gsm8k", path=FIXTURES / "gsm8k.jsonl")


@pytest.fixture
def tokenizer(gsm8k):
    texts = [m["content"] for p in gsm8k["prompt"] for m in p]
    texts += [c for c, _ in GSM8K_COMPLETIONS.values()]
    texts += Path(FIXTURES / "humaneval.jsonl").read_text(encoding="utf-8").splitlines()
    return make_tokenizer(texts)


@pytest.fixture
def model(tokenizer):
    return FakeDiffusionLM(tokenizer, {k: c for k, (c, _) in GSM8K_COMPLETIONS.items()})


def expected_metrics(completions, block_size, steps):
    lengths = [min(len(c) + 1, MAX_NEW_TOKENS) for c in completions]  # char-level + EOS, capped
    nfes = [math.ceil(n / block_size) * steps for n in lengths]
    return lengths, nfes


def test_tokenizer_is_character_level(tokenizer):
    ids = tokenizer.encode("\\boxed{18}", add_special_tokens=False)
    assert len(ids) == len("\\boxed{18}")
    assert tokenizer.decode(ids) == "\\boxed{18}"


def test_evaluate_few_step_metrics(model, tokenizer, gsm8k, tmp_path):
    settings = [
        {"block_size": 4, "steps_per_block": 4},
        DecodingSetting(block_size=8, steps_per_block=2),
        {"block_size": 4, "steps_per_block": 4, "remasking": "low_confidence_dynamic", "confidence_threshold": 0.9},
    ]
    results = evaluate_few_step(
        model,
        tokenizer,
        gsm8k,
        settings,
        batch_size=3,
        max_new_tokens=MAX_NEW_TOKENS,
        output_dir=tmp_path / "out",
        progress=False,
        dataset_name="gsm8k",
    )
    assert model.eval_called
    assert [r.setting for r in results] == ["B4-S4-static", "B8-S2-static", "B4-S4-dynamic0.9"]

    completions = [GSM8K_COMPLETIONS[k][0] for k in ("Janet", "robe", "Josh", "James")]
    truth = [GSM8K_COMPLETIONS[k][1] for k in ("Janet", "robe", "Josh", "James")]
    assert len(completions[2]) + 1 > MAX_NEW_TOKENS  # the truncated case is exercised

    for result, (block, steps) in zip(results, [(4, 4), (8, 2), (4, 2)]):
        lengths, nfes = expected_metrics(completions, block, steps)
        assert isinstance(result, EvalResult)
        assert result.num_samples == 4
        assert result.num_correct == sum(truth) == 2
        assert result.accuracy == pytest.approx(0.5)
        assert result.total_generated_tokens == sum(lengths)
        assert result.avg_gen_length == pytest.approx(sum(lengths) / 4)
        assert result.total_nfe == sum(nfes)
        assert result.avg_nfe == pytest.approx(sum(nfes) / 4)
        assert result.tokens_per_forward == pytest.approx(sum(lengths) / sum(nfes))
        assert result.total_time_s > 0
        assert result.tokens_per_second == pytest.approx(sum(lengths) / result.total_time_s)
        assert result.latency_per_sample == pytest.approx(result.total_time_s / 4)
        assert result.dataset == "gsm8k"
    assert results[2].threshold == 0.9 and results[2].remasking == "low_confidence_dynamic"

    # generate was called per batch (3 + 1 prompts) with the setting's arguments and left-padded prompts.
    assert len(model.calls) == 6
    first = model.calls[0]
    assert first["block_size"] == 4 and first["steps_per_block"] == 4
    assert first["remasking"] == "low_confidence_static"
    assert "confidence_threshold" not in first  # static: the model's default is kept
    assert first["max_new_tokens"] == MAX_NEW_TOKENS and first["return_dict_in_generate"] is True
    assert model.calls[4]["confidence_threshold"] == 0.9
    mask = first["attention_mask"]
    assert mask.shape[0] == 3
    assert bool((mask[:, -1] == 1).all())  # left padding: every prompt ends at the right edge
    assert bool((mask == 0).any())  # prompts have different lengths
    short = int(mask.sum(dim=1).argmin())
    n_pad = int((mask[short] == 0).sum())
    assert bool((first["input_ids"][short, :n_pad] == tokenizer.pad_token_id).all())
    # The chat template was applied, without doubling special tokens.
    text = tokenizer.decode(first["input_ids"][0][mask[0].bool()].tolist())
    assert text.startswith("<|user|>Janet") and text.endswith("\\boxed{}.<|assistant|>")

    # Reports.
    out = tmp_path / "out"
    assert read_json(out / "results.json") == results
    md = (out / "results.md").read_text()
    assert "B8-S2-static" in md and "50.00" in md
    assert (out / "accuracy_vs_tokens_per_step.png").stat().st_size > 0
    samples = [json.loads(line) for line in (out / "samples_B4-S4-static.jsonl").read_text().splitlines()]
    assert results[0].samples == samples  # the same per-sample results in memory
    assert "samples" not in results[0].to_dict() and "samples" not in json.loads((out / "results.json").read_text())[0]
    assert [s["correct"] for s in samples] == truth
    assert samples[0]["completion"] == completions[0]
    assert samples[2]["gen_length"] == MAX_NEW_TOKENS
    assert samples[2]["completion"] == completions[2][:MAX_NEW_TOKENS]
    assert samples[0]["nfe"] == math.ceil((len(completions[0]) + 1) / 4) * 4
    assert (out / "samples_B4-S4-dynamic0.9.jsonl").exists()


def test_per_sample_results_in_memory(model, tokenizer, gsm8k, tmp_path):
    """Without output_dir too: every problem's prompt, completion, reference, score, length and forwards."""
    results = evaluate_few_step(
        model,
        tokenizer,
        gsm8k,
        [DecodingSetting(4, 2), DecodingSetting(8, 8)],
        batch_size=3,
        max_new_tokens=MAX_NEW_TOKENS,
        progress=False,
    )
    keys = ["Janet", "robe", "Josh", "James"]
    completions = [GSM8K_COMPLETIONS[k][0] for k in keys]
    for result, (block, steps) in zip(results, [(4, 2), (8, 8)]):
        lengths, nfes = expected_metrics(completions, block, steps)
        assert [s["id"] for s in result.samples] == gsm8k["id"]
        assert [s["completion"] for s in result.samples] == [c[:MAX_NEW_TOKENS] for c in completions]
        assert [s["reference"] for s in result.samples] == gsm8k["reference"]
        assert [s["correct"] for s in result.samples] == [GSM8K_COMPLETIONS[k][1] for k in keys]
        assert [s["gen_length"] for s in result.samples] == lengths and [s["nfe"] for s in result.samples] == nfes
        assert all(s["prompt"].startswith("<|user|>") and s["scorer"] == "math" for s in result.samples)
        assert sum(s["correct"] for s in result.samples) == result.num_correct
    assert " samples=" not in repr(results[0])  # (num_samples= is)
    assert read_json_roundtrip(results, tmp_path) == results  # samples are not part of the JSON nor of equality


def read_json_roundtrip(results, tmp_path):
    from t3d_trl.evaluation import write_json

    write_json(results, tmp_path / "results.json")
    loaded = read_json(tmp_path / "results.json")
    assert all(r.samples == [] for r in loaded)
    return loaded


def test_plain_text_prompts_need_no_chat_template(model, tokenizer):
    tokenizer.chat_template = None
    ds = load_eval_dataset("gsm8k", path=FIXTURES / "gsm8k.jsonl", as_chat=False, limit=2)
    (result,) = evaluate_few_step(
        model, tokenizer, ds, [DecodingSetting(4, 1)], batch_size=8, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert result.num_correct == 2 and result.accuracy == 1.0
    text = tokenizer.decode(model.calls[0]["input_ids"][0].tolist())
    assert text.startswith("Janet")


def test_chat_prompts_without_template_are_rejected(model, tokenizer, gsm8k):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        evaluate_few_step(model, tokenizer, gsm8k, [{"block_size": 4, "steps_per_block": 1}], progress=False)


def test_code_dataset(tokenizer, monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    raw = [json.loads(line) for line in (FIXTURES / "humaneval.jsonl").read_text().splitlines()]
    completions = {
        # Correct: full function in a fenced block (List comes from the scorer's import header).
        "has_close_elements": "```python\n"
        + raw[0]["prompt"].split("\n\n\n", 1)[1]
        + raw[0]["canonical_solution"]
        + "```",
        # Wrong.
        "truncate_number": "```python\ndef truncate_number(number: float) -> float:\n    return number\n```",
        # Correct, without fences.
        "mean_absolute_deviation": raw[2]["prompt"] + raw[2]["canonical_solution"],
    }
    model = FakeDiffusionLM(tokenizer, completions)
    ds = load_eval_dataset("humaneval", path=FIXTURES / "humaneval.jsonl")

    with pytest.raises(ValueError, match=CODE_EXECUTION_ENV_VAR):
        evaluate_few_step(model, tokenizer, ds, [{"block_size": 4, "steps_per_block": 1}], progress=False)
    assert model.calls == []  # refused before generating anything

    (result,) = evaluate_few_step(
        model,
        tokenizer,
        ds,
        [{"block_size": 4, "steps_per_block": 1}],
        max_new_tokens=1024,
        allow_code_execution=True,
        progress=False,
    )
    assert result.num_correct == 2 and result.num_samples == 3


def test_scorer_override_and_default(model, tokenizer):
    ds = datasets.Dataset.from_list([{"prompt": "Janet?", "reference": "18"}, {"prompt": "robe?", "reference": "3"}])
    (default,) = evaluate_few_step(model, tokenizer, ds, [DecodingSetting(4, 1)], progress=False)
    assert default.num_correct == 0  # exact_match against the whole completion
    (math_result,) = evaluate_few_step(model, tokenizer, ds, [DecodingSetting(4, 1)], progress=False, scorer="math")
    assert math_result.num_correct == 2


def test_missing_nfe_gives_nan(tokenizer):
    class NoNfeModel(FakeDiffusionLM):
        def generate(self, **kwargs):
            out = super().generate(**kwargs)
            return SimpleNamespace(sequences=out.sequences)

    model = NoNfeModel(tokenizer, {"Janet": "\\boxed{18}"})
    ds = datasets.Dataset.from_list([{"prompt": "Janet?", "reference": "18", "scorer": "math"}])
    with pytest.warns(UserWarning, match="nfe"):
        (result,) = evaluate_few_step(model, tokenizer, ds, [DecodingSetting(4, 1)], progress=False)
    assert result.accuracy == 1.0
    assert math.isnan(result.avg_nfe) and math.isnan(result.tokens_per_forward)


def test_bad_inputs(model, tokenizer, gsm8k):
    setting = [{"block_size": 4, "steps_per_block": 1}]
    empty = datasets.Dataset.from_dict({"prompt": [], "reference": []})
    with pytest.raises(ValueError, match="empty"):
        evaluate_few_step(model, tokenizer, empty, setting, progress=False)
    with pytest.raises(ValueError, match="reference"):
        evaluate_few_step(model, tokenizer, gsm8k.remove_columns("reference"), setting, progress=False)
    with pytest.raises(ValueError, match="prompt"):
        evaluate_few_step(model, tokenizer, gsm8k.remove_columns("prompt"), setting, progress=False)
    with pytest.raises(ValueError, match="datasets.Dataset"):
        evaluate_few_step(model, tokenizer, [{"prompt": "x", "reference": "y"}], setting, progress=False)
    with pytest.raises(ValueError, match="settings"):
        evaluate_few_step(model, tokenizer, gsm8k, [], progress=False)
    with pytest.raises(ValueError, match="steps"):
        evaluate_few_step(model, tokenizer, gsm8k, [{"block_size": 4, "step": 1}], progress=False)
    with pytest.raises(ValueError, match="block_size"):
        evaluate_few_step(model, tokenizer, gsm8k, [{"block_size": 0, "steps_per_block": 1}], progress=False)
    with pytest.raises(ValueError, match="confidence_threshold"):
        DecodingSetting(4, 1, confidence_threshold=1.5)
    with pytest.raises(ValueError, match="cannot exceed block_size"):
        DecodingSetting(4, 8)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_few_step(model, tokenizer, gsm8k, setting, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="Valid scorers"):
        evaluate_few_step(model, tokenizer, gsm8k, setting, scorer="bleu", progress=False)
    for name, value in (("batch_size", True), ("batch_size", 2.0), ("max_new_tokens", 0), ("max_new_tokens", None)):
        with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value!r}"):
            evaluate_few_step(model, tokenizer, gsm8k, setting, progress=False, **{name: value})
    with pytest.raises(ValueError, match=r"generate_kwargs sets \['block_size', 'max_new_tokens'\].*DecodingSetting"):
        evaluate_few_step(model, tokenizer, gsm8k, setting, generate_kwargs={"block_size": 8, "max_new_tokens": 9},
                          progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"num_return_sequences=2: evaluate_few_step scores one completion"):
        evaluate_few_step(model, tokenizer, gsm8k, setting, generate_kwargs={"num_return_sequences": 2}, progress=False)
    with pytest.raises(TypeError, match="generate_kwargs must be a dict"):
        evaluate_few_step(model, tokenizer, gsm8k, setting, generate_kwargs=[("temperature", 0)], progress=False)
    with pytest.raises(ValueError, match=r"Row 1: the `reference` is missing \(None; 1 such row"):
        no_reference = datasets.Dataset.from_list(
            [{"prompt": "a", "reference": "x"}, {"prompt": "b", "reference": None}]
        )
        evaluate_few_step(model, tokenizer, no_reference, setting, progress=False)
    with pytest.raises(TypeError, match=r"has no generate\(\)"):
        evaluate_few_step(object(), tokenizer, gsm8k, setting, progress=False)
    assert model.calls == []


@pytest.mark.parametrize(
    "setting, generate_kwargs, match",
    [
        ({"block_size": 4, "steps_per_block": 2, "remasking": "nope"}, None, r"B4-S2-static.*nope"),
        ({"block_size": 4, "steps_per_block": 2}, {"temperature": -1}, r"B4-S2-static.*temperature"),
        ({"block_size": 4, "steps_per_block": 2}, {"no_such_option": 1}, r"B4-S2-static.*no_such_option"),
        ({"block_size": 4, "steps_per_block": 2}, {"num_beams": 2}, r"does not implement: \{'num_beams': 2\}"),
    ],
)
def test_decoding_settings_of_a_patched_model_are_checked_before_generating(setting, generate_kwargs, match):
    from t3d_trl import patch_model
    from t3d_trl.testing import tiny_qwen3, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = patch_model(tiny_qwen3(seed=0), tokenizer)
    calls = []
    model.generate = lambda **kwargs: calls.append(kwargs)
    ds = datasets.Dataset.from_list([{"prompt": "abc", "reference": "x"}])
    with pytest.raises(ValueError, match=match):
        evaluate_few_step(model, tokenizer, ds, [setting], generate_kwargs=generate_kwargs, progress=False)
    assert calls == []


def test_each_setting_reports_the_paper_accuracy_and_the_disagreements(model, tokenizer, gsm8k, tmp_path):
    """`math` rows are scored by `paper_math` too: Janet's box passes both, robe's "The answer is 3" line passes only
    t3d-trl's scorer (the paper reads boxes only), the other two fail both."""
    results = evaluate_few_step(
        model, tokenizer, gsm8k, [DecodingSetting(4, 2), DecodingSetting(8, 8)], batch_size=3,
        max_new_tokens=MAX_NEW_TOKENS, output_dir=tmp_path, progress=False,
    )  # fmt: skip
    for result in results:
        assert result.accuracy == pytest.approx(0.5) and result.paper_accuracy == pytest.approx(0.25)
        assert result.paper_num_correct == 1 and result.num_disagreements == 1
        assert [s["paper_correct"] for s in result.samples] == [True, False, False, False]
        assert [s["correct"] for s in result.samples] == [True, True, False, False]
        assert {s["paper_scorer"] for s in result.samples} == {"paper_math"}
    (written,) = [json.loads(line) for line in (tmp_path / "samples_B4-S2-static.jsonl").read_text().splitlines()][:1]
    assert written["paper_correct"] is True and written["correct"] is True  # both verdicts in the per-item output
    assert read_json(tmp_path / "results.json")[0].num_disagreements == 1
    assert "| Paper acc. (%) | Disagree |" in (tmp_path / "results.md").read_text()
    (off,) = evaluate_few_step(
        model, tokenizer, gsm8k, [DecodingSetting(4, 2)], max_new_tokens=MAX_NEW_TOKENS, progress=False,
        paper_scores=False,
    )  # fmt: skip
    assert off.paper_accuracy is None and off.num_disagreements is None and off.samples[0]["paper_correct"] is None


def test_rows_whose_scorer_has_no_paper_twin_report_no_paper_accuracy(model, tokenizer):
    ds = datasets.Dataset.from_list(
        [{"prompt": "Janet?", "reference": "18", "scorer": "math"}, {"prompt": "robe?", "reference": "x"}]
    )
    (result,) = evaluate_few_step(model, tokenizer, ds, [DecodingSetting(4, 1)], progress=False)
    assert result.paper_accuracy is None and result.num_disagreements is None  # exact_match has no twin
    assert [s["paper_scorer"] for s in result.samples] == ["paper_math", None]


def test_evaluating_an_unpatched_model_says_to_patch_it(tokenizer, gsm8k):
    from t3d_trl.testing import tiny_qwen3

    unpatched = tiny_qwen3(vocab_size=len(tokenizer))  # transformers' autoregressive generate()
    with pytest.raises(TypeError, match=r"autoregressive generate\(\).*t3d_trl.patch_model\(model, tokenizer\)"):
        evaluate_few_step(unpatched, tokenizer, gsm8k, [DecodingSetting(4, 1)], progress=False)


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(model, tokenizer, gsm8k, tmp_path):
    taken = tmp_path / "results.txt"
    taken.write_text("not a directory")
    for output_dir in (taken, taken / "sub"):
        with pytest.raises(ValueError, match="output_dir .* (is a file|is below the file).*directory"):
            evaluate_few_step(model, tokenizer, gsm8k, [DecodingSetting(4, 1)], output_dir=output_dir, progress=False)
    assert model.calls == []  # nothing generated
