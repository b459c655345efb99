"""Each decision is a registry: a new model family, objective, remasking strategy (with a parameter) and evaluation
set are each one class or function plus one registration (the examples of docs/design.md)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from t3d_trl import DataCollatorForTrajectory, T3DTrainer, patch_model
from t3d_trl.evaluation import EvalDatasetSpec, evaluate_few_step, load_eval_dataset, register_eval_dataset
from t3d_trl.evaluation.datasets import EVAL_DATASETS
from t3d_trl.generation.remasking import REMASKING, RemaskingStrategy, register_remasking
from t3d_trl.models.families import FAMILIES, BlockCausalFamily, register_family
from t3d_trl.objectives import OBJECTIVES, ObjectiveInputs, objective_params, register_objective, student_request
from t3d_trl.statistics import STATISTICS
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer


# --- a family: block-causal attention, but blocks that start at the response (one class, one registration) -------
class ResponseGridFamily(BlockCausalFamily):
    name = "toy_response_grid"
    description = "block-causal models decoded on the response grid (a test family)"
    decoding_grid = "response"

    @classmethod
    def matches(cls, model) -> bool:
        return False  # only when asked for by name


# --- an objective: Naive TD summed over the masked tokens instead of averaged -------------------------------------
def summed_td(inputs):
    mask = inputs.batch["loss_mask"]
    loss = -(inputs.scores.label_log_probs * mask).sum(-1)
    return loss, {"loss/summed_td": loss}


# --- a remasking strategy with a parameter: left to right, but every position above a confidence floor at once ---
class SequentialAboveFloor(RemaskingStrategy):
    name = "toy_sequential_floor"
    parameters = {"confidence_floor": 0.5}

    def __init__(self, confidence_floor: float = 0.5) -> None:
        self.floor = confidence_floor

    @classmethod
    def check_parameters(cls, values):
        if not 0.0 <= values["confidence_floor"] <= 1.0:
            raise ValueError(f"`confidence_floor` must lie in [0, 1], got {values['confidence_floor']!r}.")

    def select(self, confidence, entropy, masked, k, generator=None):
        leftmost = masked & (masked.cumsum(-1) <= k)
        return leftmost | (masked & (confidence >= self.floor))


@pytest.fixture()
def registered():
    register_family(ResponseGridFamily)
    register_objective("summed_td", summed_td)
    register_remasking(SequentialAboveFloor)
    register_eval_dataset(
        EvalDatasetSpec(
            "toy_copy",
            "nobody/toy-copy",
            None,
            "test",
            "exact_match",
            "Copy: {question}",
            lambda row, template, index: (f"toy/{index}", template.replace("{question}", row["q"]), row["a"]),
        ),
        aliases=("toy copy",),
    )
    yield
    FAMILIES.unregister(ResponseGridFamily.name)
    OBJECTIVES.unregister("summed_td")
    REMASKING.unregister(SequentialAboveFloor.name)
    EVAL_DATASETS.unregister("toy_copy")


def test_a_new_family_decodes_and_trains(registered, tmp_path):
    tokenizer = tiny_tokenizer(padding_side="left")
    model = patch_model(tiny_qwen3(), tokenizer, family="toy_response_grid", block_size=4, max_new_tokens=8)
    assert model.diffusion_family.decoding_grid == "response"
    batch = tokenizer(["abc", "hello wor"], return_tensors="pt", padding=True)
    out = model.generate(**batch, return_dict_in_generate=True)
    for row, prompt in enumerate(["abc", "hello wor"]):  # blocks start at each row's first generated token
        alone = model.generate(**tokenizer([prompt], return_tensors="pt"), return_dict_in_generate=True)
        assert out.step_map[row, : alone.step_map.shape[1]].tolist() == alone.step_map[0].tolist()
    collator = DataCollatorForTrajectory(
        mask_token_id=2, pad_token_id=0, eos_token_id=1, block_size=4, family="toy_response_grid"
    )
    assert collator.grid.name == "response"


def test_a_new_objective_trains(registered, tmp_path):
    tokenizer = tiny_tokenizer()
    rows = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, ["abc", "xyz"]))
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path, loss_type=["summed_td"], max_steps=2),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "loss/summed_td" in logs[0] and trainer.ref_model is None
    # per example, the summed loss is Naive TD's mean loss times the number of masked tokens
    batch = trainer.data_collator([dict(r, example_index=i) for i, r in enumerate(trainer.train_dataset)])
    with torch.no_grad():
        scores = trainer._window_statistics(trainer.model, batch, student_request(batch, trainer.args))
    inputs = ObjectiveInputs(scores, batch, trainer.args)
    summed, _ = OBJECTIVES["summed_td"].function(inputs)
    mean, _ = OBJECTIVES["td"].function(inputs)
    torch.testing.assert_close(summed, mean * batch["loss_mask"].sum(-1))


@pytest.fixture()
def toy_objective():
    """tests/toy_objective.py imported (its registrations run), then both registrations undone."""
    module = (
        importlib.reload(toy) if (toy := sys.modules.get("toy_objective")) else importlib.import_module("toy_objective")
    )
    yield module
    OBJECTIVES.unregister("td_with_gap")
    STATISTICS.unregister("max_log_prob")


def test_a_new_objective_that_needs_a_new_statistic_is_one_module(toy_objective, tmp_path):
    tokenizer = tiny_tokenizer()
    rows = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, ["abc", "xyz", "hello"]))
    args = tiny_t3d_config(
        tmp_path, loss_type=["td_with_gap"], objective_kwargs={"td_with_gap": {"weight": 0.5}}, max_steps=2
    )
    trainer = T3DTrainer(tiny_qwen3(dtype=torch.float32), args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"loss/td_with_gap", "gap"} <= set(logs[0]) and trainer.ref_model is None
    # the statistic computed in chunks inside the forward equals the plain formula on the whole logits
    batch = trainer.data_collator([dict(r, example_index=i) for i, r in enumerate(trainer.train_dataset)])
    request = student_request(batch, trainer.args)
    assert request.extra == {"max_log_prob": {"temperature": 1.0}}
    with torch.no_grad():
        scores = trainer._window_statistics(trainer.model, batch, request)
        logits = trainer.layout.forward(trainer.model, batch)
    log_probs = logits.float().log_softmax(-1)
    torch.testing.assert_close(scores["max_log_prob"], log_probs.amax(-1), atol=1e-5, rtol=0)
    mask = batch["loss_mask"]
    gap = ((log_probs.amax(-1) - log_probs.gather(-1, batch["labels"][..., None])[..., 0]) * mask).sum(-1)
    params = objective_params(trainer.args, "td_with_gap")
    assert params.weight == 0.5
    loss, metrics = OBJECTIVES["td_with_gap"].function(ObjectiveInputs(scores, batch, trainer.args, params=params))
    torch.testing.assert_close(metrics["gap"], gap / mask.sum(-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"objective_kwargs\['td_with_gap'\] sets \['wieght'\]"):
        tiny_t3d_config(tmp_path, loss_type=["td_with_gap"], objective_kwargs={"td_with_gap": {"wieght": 0.5}})


def test_the_design_docs_show_the_toy_objective_module_as_it_is():
    design = (Path(__file__).parent.parent / "docs" / "design.md").read_text(encoding="utf-8")
    module = (Path(__file__).parent / "toy_objective.py").read_text(encoding="utf-8")
    body = module.split('"""', 2)[2].lstrip("\n")  # the code after the module docstring
    assert body in design, "docs/design.md ('Adding an objective') must show tests/toy_objective.py's code as it is"


def test_a_new_remasking_strategy_with_a_parameter(registered):
    tokenizer = tiny_tokenizer()
    model = patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=8)
    ids = torch.tensor([tokenizer("abcdefgh")["input_ids"]])
    sequential = model.generate(ids, steps_per_block=4, remasking="sequential", return_dict_in_generate=True)
    floor_one = model.generate(
        ids, steps_per_block=4, remasking="toy_sequential_floor", confidence_floor=1.0, return_dict_in_generate=True
    )
    assert torch.equal(floor_one.step_map, sequential.step_map)  # nothing above 1.0: plain left to right
    floor_zero = model.generate(
        ids, steps_per_block=4, remasking="toy_sequential_floor", confidence_floor=0.0, return_dict_in_generate=True
    )
    assert int(floor_zero.nfe) == 2  # everything above 0.0: one step per block
    with pytest.raises(ValueError, match="confidence_floor"):
        model.generate(ids, remasking="toy_sequential_floor", confidence_floor=2.0)


def test_a_new_evaluation_set(registered, tmp_path):
    path = tmp_path / "copy.jsonl"
    path.write_text("\n".join(json.dumps({"q": q, "a": q}) for q in ["ab", "cd"]) + "\n")
    dataset = load_eval_dataset("Toy Copy", path=str(path), as_chat=False)
    assert dataset["prompt"] == ["Copy: ab", "Copy: cd"] and dataset["scorer"] == ["exact_match"] * 2
    tokenizer = tiny_tokenizer()
    model = patch_model(tiny_qwen3(), tokenizer, block_size=4)
    results = evaluate_few_step(
        model, tokenizer, dataset, [{"block_size": 4, "steps_per_block": 2}], max_new_tokens=4, progress=False
    )
    assert results[0].num_samples == 2
    with pytest.raises(ValueError, match="already registered"):
        register_eval_dataset(dataclasses.replace(EVAL_DATASETS["toy_copy"], split="train"))
