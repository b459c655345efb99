"""Window statistics computed in chunks from the last hidden states equal those of the whole logits, with equal
gradients; the trainer's loss and gradients do not depend on the chunking."""

from __future__ import annotations

import pytest
import torch

from t3d_trl import T3DTrainer
from t3d_trl.layouts import training_layout
from t3d_trl.models.families import get_family
from t3d_trl.statistics import StatisticsRequest, statistics_head, window_statistics
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer


def _request(labels, fake=None, draw=None, entropy=None):
    extra = {} if entropy is None else {"entropy": {"temperature": entropy}}
    return StatisticsRequest(labels=labels, fake_tokens=fake, draw_fake_temperature=draw, extra=extra)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_statistics_head_equals_whole_logits_with_gradients(chunk_size):
    model = tiny_qwen3(dtype=torch.float64)
    model.train()
    ids = torch.randint(4, 48, (3, 11), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 48, (3, 7), generator=torch.Generator().manual_seed(1))
    fake = torch.randint(0, 48, (3, 7), generator=torch.Generator().manual_seed(2))
    request = _request(labels, fake, entropy=0.5)

    def loss_of(values):
        # a combination that reaches every differentiable statistic
        return (values[..., 0] * 0.3 + values[..., 1] - values[..., 2] * 0.7 + values[..., -1] * 1.3).square().sum()

    whole = window_statistics(model(ids, logits_to_keep=7).logits, request)
    loss_of(whole.values).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    with statistics_head(model, request, chunk_size) as head:
        values = model(ids, logits_to_keep=7).logits
    assert head.calls == 1 and values.shape == (3, 7, whole.values.shape[-1])
    torch.testing.assert_close(values, whole.values, atol=1e-12, rtol=0)
    loss_of(values).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-10, rtol=1e-8, msg=name)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the head is back


@pytest.mark.parametrize("with_fake", [True, False])
def test_statistics_gradients_equal_the_plain_formulas(with_fake):
    """The hand-written backward of log Z and the gathered logits equals autograd through ``logsumexp`` and
    ``gather`` (and passes ``gradcheck``), with repeated labels and fake tokens equal to labels."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.tensor([[0, 3, 3, 10, 5], [1, 1, 2, 7, 9]])
    fake = torch.tensor([[0, 4, 3, 1, 5], [2, 1, 6, 7, 0]]) if with_fake else None
    weights = torch.randn(2, 5, 3, dtype=torch.float64, generator=generator)

    def plain(z):
        log_z = z.logsumexp(-1)
        label = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        gathered = z.gather(-1, fake.unsqueeze(-1)).squeeze(-1) if with_fake else torch.zeros_like(log_z)
        return torch.stack([log_z, label, gathered], -1)

    def ours(z):
        return window_statistics(z, _request(labels, fake), chunk_size=4).values[..., :3]

    torch.testing.assert_close(ours(logits), plain(logits), atol=1e-12, rtol=0)
    (expected,) = torch.autograd.grad((plain(logits) * weights).sum(), logits)
    (got,) = torch.autograd.grad((ours(logits) * weights).sum(), logits)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(ours, (logits,))


def test_drawn_fake_tokens_are_the_reference_argmax():
    logits = torch.randn(2, 5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.zeros(2, 5, dtype=torch.long)
    stats = window_statistics(logits, _request(labels, draw=0.0), chunk_size=2)
    assert torch.equal(stats.fake_tokens, logits.argmax(-1))
    torch.testing.assert_close(stats.fake_log_probs, logits.log_softmax(-1).amax(-1))
    torch.testing.assert_close(stats.label_log_probs, logits.log_softmax(-1)[..., 0])
    torch.testing.assert_close(stats.log_normalizer, logits.logsumexp(-1))


def test_tempered_entropy_and_predictions():
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    stats = window_statistics(logits, _request(torch.zeros(1, 4, dtype=torch.long), entropy=0.5))
    p = (logits / 0.5).softmax(-1)
    torch.testing.assert_close(stats["entropy"], -(p * p.log()).sum(-1))
    assert torch.equal(stats.predictions, logits.argmax(-1))


@pytest.mark.parametrize("loss_type", [["ddo", "path"], ["dparallel"]])
def test_trainer_loss_and_gradients_do_not_depend_on_the_chunking(tmp_path, loss_type):
    tokenizer = tiny_tokenizer()
    rows = rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, ["abc", "hello wor", "xyz", "k"])
    from datasets import Dataset

    results = []
    for chunk in (0, 2):
        args = tiny_t3d_config(tmp_path / str(chunk), loss_type=loss_type, logits_chunk_size=chunk, max_steps=1)
        trainer = T3DTrainer(
            tiny_qwen3(dtype=torch.float64),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        batch = trainer.data_collator([dict(r, example_index=i) for i, r in enumerate(trainer.train_dataset)])
        model = trainer.model.train()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-10, rtol=1e-8, msg=name)


def test_models_that_post_process_logits_use_the_whole_logits():
    model = tiny_qwen3(dtype=torch.float64)
    model.config.final_logit_softcapping = 30.0  # e.g. Gemma: the head's output is not the logits
    family = get_family(model)
    batch = {
        "input_ids": torch.randint(4, 48, (1, 6)),
        "attention_mask": None,
        "logits_to_keep": 3,
        "block_ids": torch.zeros(1, 6, dtype=torch.long),
        "stream_ids": torch.zeros(1, 6, dtype=torch.long),
        "valid": torch.ones(1, 6, dtype=torch.bool),
        "position_ids": torch.arange(6)[None],
    }
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: seen.append(output.shape))
    training_layout(family).forward(
        model, batch, statistics=_request(torch.zeros(1, 3, dtype=torch.long)), chunk_size=2
    )
    assert seen == [(1, 3, 48)]  # the real head ran (on the window), no StatisticsHead
