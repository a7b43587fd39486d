"""Throughput pieces that change what a step computes: token-budget plans, bucketed padding,
MLM logits at masked positions only, gradient checkpointing."""

from __future__ import annotations

import random

import pytest
import torch

from llmtune.engine.batching import TokenBudgetPlan, pad_to_multiple
from llmtune.errors import UserError


def _lengths(n: int = 400, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(128, int(rng.lognormvariate(3.2, 0.6)) + 2) for _ in range(n)]


# ------------------------------------------------------------------ token-budget plan
@pytest.mark.parametrize("accum,world", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_token_budget_micro_batches_fit_the_budget_and_use_each_example_once(accum, world):
    lengths = _lengths()
    plan = TokenBudgetPlan(lengths, max_tokens=512, grad_accum=accum, world_size=world, seed=3)
    plan.check()
    per_rank = [plan.micro_batches(epoch=0, rank=r) for r in range(world)]
    assert all(len(m) == plan.steps_per_epoch * accum for m in per_rank)
    flat = [i for micro in per_rank for batch in micro for i in batch]
    assert len(flat) == len(set(flat))  # no example twice in an epoch
    for micro in per_rank:
        for batch in micro:
            assert len(batch) * max(lengths[i] for i in batch) <= 512
    # Few examples are left out: only the micro-batches that do not fill a last step.
    assert len(flat) >= len(lengths) - (accum * world - 1) * 512 // min(lengths)


def test_token_budget_batches_hold_similar_lengths_so_padding_is_small():
    lengths = _lengths()
    plan = TokenBudgetPlan(lengths, max_tokens=1024, grad_accum=1, world_size=1, seed=0)
    batches = plan.micro_batches(0, 0)
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert real / padded > 0.9
    shuffled = random.Random(0).sample(range(len(lengths)), len(lengths))
    fixed = [shuffled[i : i + 16] for i in range(0, len(lengths), 16)]  # unsorted batches of 16
    assert real / padded > sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in fixed) + 0.2
    # Short examples travel in big batches, long ones in small.
    sizes = {len(b): max(lengths[i] for i in b) for b in batches}
    assert max(sizes) > 4 * min(sizes)


def test_token_budget_plan_is_seeded_and_reshuffled_each_epoch():
    lengths = _lengths()
    a = TokenBudgetPlan(lengths, 512, 1, 1, seed=5)
    b = TokenBudgetPlan(list(lengths), 512, 1, 1, seed=5)
    assert a.micro_batches(0, 0) == b.micro_batches(0, 0)
    assert a.micro_batches(0, 0) != a.micro_batches(1, 0)
    assert a.micro_batches(0, 0) != TokenBudgetPlan(lengths, 512, 1, 1, seed=6).micro_batches(0, 0)
    assert a.fingerprint != TokenBudgetPlan(lengths, 1024, 1, 1, seed=5).fingerprint


def test_token_budget_smaller_than_an_example_is_a_user_error():
    plan = TokenBudgetPlan([10, 200, 30], max_tokens=128, grad_accum=1, world_size=1, seed=0)
    with pytest.raises(UserError, match=r"trainer.max_tokens=128 is smaller than the longest training example \(200 tokens\)"):
        plan.check()


# ------------------------------------------------------------------ bucketed padding
def test_pad_to_multiple_pads_each_sequence_tensor_with_its_own_fill():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[1, 2, 3], [4, 5, -100]]),
    }
    out = pad_to_multiple(batch, 8, pad_id=0)
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][:, 3:].eq(0).all()
    assert out["attention_mask"][:, 3:].eq(0).all() and out["attention_mask"][:, :3].equal(batch["attention_mask"])
    assert out["labels"][:, 3:].eq(-100).all()
    # Per-example labels (classification) are not sequence tensors and stay as they are.
    cls = pad_to_multiple({"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.tensor([0, 1])}, 4, pad_id=0)
    assert cls["input_ids"].shape == (2, 8) and cls["labels"].tolist() == [0, 1]
    assert pad_to_multiple(batch, 3, pad_id=0) is batch  # already a multiple


def test_bucketed_padding_does_not_change_the_loss():
    from transformers import BertConfig, BertForTokenClassification

    from llmtune.engine.loss import cross_entropy_sum

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)).eval()
    ids = torch.randint(1, 50, (2, 11))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (2, 11))}
    padded = pad_to_multiple(dict(batch), 16, pad_id=0)
    with torch.no_grad():
        a = cross_entropy_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        b = cross_entropy_sum(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits, padded["labels"])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ MLM head at masked positions
def _tiny_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(config)


def test_mlm_logits_at_masked_positions_give_the_full_loss_and_gradients():
    from llmtune.engine.loss import cross_entropy_sum
    from llmtune.tasks.mlm import MLMTask

    model = _tiny_mlm()
    ids = torch.randint(5, 120, (3, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 7], labels[1, 9], labels[2, 15] = 11, 12, 13, 14
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    full = cross_entropy_sum(model(**batch).logits, labels)
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    logits, picked = MLMTask().logits(model, batch, labels)
    assert logits.shape == (4, 120) and picked.tolist() == [11, 12, 13, 14]
    gathered = cross_entropy_sum(logits, picked)
    gathered.backward()
    torch.testing.assert_close(gathered, full)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)
    # The hook stays attached but idle: a plain forward still scores every position.
    assert model(**batch).logits.shape == (3, 16, 120)


# ------------------------------------------------------------------ gradient checkpointing
def test_gradient_checkpointing_gives_the_same_gradients():
    from transformers import BertConfig, BertForTokenClassification

    from llmtune.builders import enable_gradient_checkpointing

    def grads(checkpointing: bool) -> dict:
        torch.manual_seed(0)
        model = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3))
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert model.is_gradient_checkpointing
        model.train()  # dropout on: non-reentrant checkpointing replays the same RNG state
        torch.manual_seed(1)
        ids = torch.randint(1, 50, (2, 9))
        model(input_ids=ids, labels=torch.randint(0, 3, (2, 9))).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, recomputed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], msg=name)


def test_gradient_checkpointing_on_a_model_without_support_is_a_user_error():
    class NoCheckpointing(torch.nn.Module):
        supports_gradient_checkpointing = False

    from llmtune.builders import enable_gradient_checkpointing

    with pytest.raises(UserError, match="does not support it; set trainer.gradient_checkpointing=false"):
        enable_gradient_checkpointing(NoCheckpointing())


# ------------------------------------------------------------------ vocabulary padding
def test_vocabulary_rows_are_rounded_up_for_scratch_and_loaded_models(gpt_tok, tmp_path):
    from omegaconf import OmegaConf

    from conftest import ROOT
    from llmtune.models import load_model
    from llmtune.tasks.clm import CLMTask

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_llama.yaml")
    assert len(gpt_tok) % 64 != 0
    plain = load_model(cfg, CLMTask(), gpt_tok, {})
    assert plain.get_input_embeddings().num_embeddings == len(gpt_tok)

    cfg.pad_vocab_to_multiple_of = 64
    padded = load_model(cfg, CLMTask(), gpt_tok, {})
    rows = padded.get_input_embeddings().num_embeddings
    assert rows % 64 == 0 and len(gpt_tok) <= rows < len(gpt_tok) + 64
    assert padded.get_output_embeddings().weight.shape[0] == rows  # the LM head follows

    plain.save_pretrained(tmp_path / "model")  # a saved model with an unpadded vocabulary
    cfg.name_or_path, cfg.config = str(tmp_path / "model"), None
    loaded = load_model(cfg, CLMTask(), gpt_tok, {})
    assert loaded.get_input_embeddings().num_embeddings == rows
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():  # the original rows keep their weights
        torch.testing.assert_close(loaded.get_input_embeddings()(ids), plain.get_input_embeddings()(ids))
