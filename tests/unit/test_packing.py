"""SFT formatting and sequence packing.

The key property: packing changes nothing but speed. The same samples give the same summed
token loss and the same gradients padded one per row or packed several per row, because
position_ids restart at each sample and transformers turns that into a block-diagonal causal
mask. Naive concatenation (positions running on across samples) gives a different loss, so
the comparison can fail; so does a forward pass that keeps the default use_cache=True.
"""

from __future__ import annotations

import logging
import random
from itertools import pairwise

import pytest
import torch
from datasets import Dataset, DatasetDict
from omegaconf import OmegaConf

from conftest import ROOT, SFT_SAMPLES
from llmtune.engine.loss import cross_entropy_sum
from llmtune.errors import UserError
from llmtune.tasks import common
from llmtune.tasks.base import IGNORE_INDEX
from llmtune.tasks.sft import SFTTask, shifted_labels

X = IGNORE_INDEX


# ------------------------------------------------------------------ the packer
def test_best_fit_never_splits_fills_rows_and_keeps_every_item():
    rng = random.Random(0)
    lengths = [max(1, min(128, round(rng.lognormvariate(3.2, 0.8)))) for _ in range(500)]
    bins = common.pack_best_fit(lengths, 128)
    members = sorted(i for b in bins for i in b)
    assert members == list(range(len(lengths)))               # each sample once, none split or lost
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.05 + 1                 # close to the fewest rows possible


def test_best_fit_is_deterministic_and_fills_tightest_row():
    lengths = [5, 7, 3, 3, 2, 9, 1]
    assert common.pack_best_fit(lengths, 10) == common.pack_best_fit(list(lengths), 10)
    # Longest first: 9 | 7 | 5; then 3 -> the 7 row (3 free), 3 -> the 5 row (5 free -> 2),
    # 2 -> the 5+3 row (2 free, exactly), 1 -> the 9 row (the tightest with room).
    assert common.pack_best_fit(lengths, 10) == [[5, 6], [1, 2], [0, 3, 4]]


def test_best_fit_refuses_an_item_longer_than_a_row():
    with pytest.raises(ValueError, match="more than a bin holds"):
        common.pack_best_fit([3, 11], 10)


def test_pad_packed_restarts_positions_masks_and_ignores_row_end_padding():
    features = [
        {"input_ids": [1, 2, 3, 4, 5], "position_ids": [0, 1, 2, 0, 1], "labels": [X, 3, X, 5, X]},
        {"input_ids": [6, 7], "position_ids": [0, 1], "labels": [7, X]},
    ]
    batch = common.pad_packed(features, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]  # the padding is a block of its own
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]        # counts real tokens only
    assert batch["labels"].tolist() == [[X, 3, X, 5, X], [7, X, X, X, X]]


def test_packed_forward_leaves_mask_and_cache_out_only_for_packed_batches():
    seen = []

    class Model:
        def __call__(self, **batch):
            seen.append(sorted(batch))
            return type("Out", (), {"logits": torch.zeros(1)})()

    one = torch.ones(1, 2, dtype=torch.long)
    common.packed_forward(Model(), {"input_ids": one, "attention_mask": one, "position_ids": one}, torch.zeros(1))
    common.packed_forward(Model(), {"input_ids": one, "attention_mask": one, "example_ids": ["a"]}, torch.zeros(1))
    # ... and metadata (not a tensor) never reaches the model.
    assert seen == [["input_ids", "position_ids", "use_cache"], ["attention_mask", "input_ids"]]


# ------------------------------------------------------------------ SFT formatting
def test_shifted_labels_cover_response_and_eos_only():
    ids = [10, 11, 12, 20, 21, 2]
    learned = [False, False, False, True, True, True]
    # Position t predicts token t+1: the last prompt token predicts the first response token.
    assert shifted_labels(ids, learned) == [X, X, 20, 21, 2, X]


SAMPLES = SFT_SAMPLES * 3


@pytest.fixture(scope="module")
def sft_tok():
    """A byte-level BPE trained on the samples' plain-template text (EOS <|endoftext|>, pad <pad>)."""
    from llmtune.tokenization import train_tokenizer

    return train_tokenizer(SFTTask().texts(Dataset.from_list(SAMPLES)), decoder=True, vocab_size=300)


def _raw(rows=SAMPLES):
    return DatasetDict({"train": Dataset.from_list(rows)})


def test_plain_template_learns_only_the_response_and_eos(sft_tok):
    data = SFTTask().preprocess(_raw(SAMPLES[:1]), sft_tok)
    row = data["train"][0]
    assert sft_tok.decode(row["input_ids"]) == "### Instruction:\nWhat is 2 plus 3?\n\n### Response:\n2 plus 3 is 5.<|endoftext|>"
    assert sft_tok.decode([t for t in row["labels"] if t != X]) == "2 plus 3 is 5.<|endoftext|>"
    assert row["labels"][-1] == X and row["input_ids"][-1] == sft_tok.eos_token_id
    assert "position_ids" not in data["train"].column_names


def test_messages_rows_learn_every_assistant_turn(sft_tok):
    chat = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "5."},
    ]}
    row = SFTTask().preprocess(_raw([chat]), sft_tok)["train"][0]
    text = sft_tok.decode(row["input_ids"])
    assert text.startswith("### System:\nBe brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.<|endoftext|>### Instruction:")
    assert sft_tok.decode([t for t in row["labels"] if t != X]) == "Hello.<|endoftext|>5.<|endoftext|>"


def test_chat_template_is_used_when_the_tokenizer_has_one(sft_tok):
    import copy

    tok = copy.deepcopy(sft_tok)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    row = SFTTask().preprocess(_raw(SAMPLES[:1]), tok)["train"][0]
    assert tok.decode(row["input_ids"]) == "<user>What is 2 plus 3?\n<assistant>2 plus 3 is 5.\n<|endoftext|>"
    assert tok.decode([t for t in row["labels"] if t != X]) == "2 plus 3 is 5.\n<|endoftext|>"


def test_missing_columns_are_one_clear_line(sft_tok):
    with pytest.raises(UserError, match="needs 'prompt' and 'response' columns or a 'messages' column.*found: text"):
        SFTTask().preprocess(_raw([{"text": "a"}]), sft_tok)


def test_packing_keeps_samples_whole_and_truncates_long_ones(sft_tok, caplog):
    long_response = {"prompt": "Repeat egg.", "response": ", ".join(["egg x2"] * 40)}
    long_prompt = {"prompt": ", ".join(["egg x2"] * 40), "response": "Done."}
    rows = SAMPLES + [long_response, long_prompt]
    plain = SFTTask(max_length=96).preprocess(_raw(rows), sft_tok)["train"]
    with caplog.at_level(logging.INFO, logger="llmtune"):
        packed = SFTTask(max_length=96, packing=True).preprocess(_raw(rows), sft_tok)["train"]
    assert "train: 2 of 20 samples are longer than task.max_length=96 tokens and were truncated" in caplog.text
    assert "train: dropped 1 samples with no response token left" in caplog.text  # the long prompt
    assert "packed 19 samples into" in caplog.text
    assert all(len(r) <= 96 for r in packed["input_ids"])
    assert len(packed) < len(plain)
    # Cutting every packed row at its position restarts gives back exactly the unpacked samples.
    pieces = []
    for ids, labels, positions in zip(packed["input_ids"], packed["labels"], packed["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        assert positions == [p for a, b in pairwise(starts) for p in range(b - a)]
        pieces += [(ids[a:b], labels[a:b]) for a, b in pairwise(starts)]
    assert sorted(pieces) == sorted(zip(plain["input_ids"], plain["labels"], strict=True))
    again = SFTTask(max_length=96, packing=True).preprocess(_raw(rows), sft_tok)["train"]
    assert again["input_ids"] == packed["input_ids"]  # deterministic


# ------------------------------------------------------------------ packed == unpacked
def _model(tok, task, attn: str):
    """The tiny_llama.yaml decoder built the way llmtune builds it (from config, fixed seed)."""
    from llmtune.models import load_model

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_llama.yaml")
    cfg.attn_implementation = attn
    torch.manual_seed(0)
    task.setup(_raw())
    model = load_model(cfg, task, tok, task.model_kwargs()).float()
    model.train()
    return model


def _loss_and_grads(model, task, batch):
    """(summed loss, labelled tokens, gradients, each labelled token's loss sorted) of one batch."""
    batch = dict(batch)
    labels = batch.pop("labels")
    model.zero_grad(set_to_none=True)
    logits, labels = task.logits(model, batch, labels)
    loss = cross_entropy_sum(logits, labels)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    keep = labels.reshape(-1) != X
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep], labels.reshape(-1)[keep], reduction="none")
    return loss.item(), int(keep.sum()), grads, per_token.detach().sort().values


def _batches(tok, max_length=192):
    plain_task, packed_task = SFTTask(max_length=max_length), SFTTask(max_length=max_length, packing=True)
    plain = plain_task.preprocess(_raw(), tok)["train"]
    packed = packed_task.preprocess(_raw(), tok)["train"]
    assert len(packed) < len(plain) / 2  # several samples per row
    one_per_row = plain_task.collator(tok, train=True)([dict(r) for r in plain])
    packed_rows = packed_task.collator(tok, train=True)([dict(r) for r in packed])
    return packed_task, one_per_row, packed_rows


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_unpacked_give_the_same_loss_and_gradients(sft_tok, attn):
    task, one_per_row, packed_rows = _batches(sft_tok)
    model = _model(sft_tok, task, attn)
    loss_a, n_a, grads_a, tokens_a = _loss_and_grads(model, task, one_per_row)
    loss_b, n_b, grads_b, tokens_b = _loss_and_grads(model, task, packed_rows)
    assert n_a == n_b  # the same labelled tokens
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert (tokens_b - tokens_a).abs().max() < 1e-5  # token by token, not only on the sum
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # The engine's token count (attention-mask ones) is the real tokens, no row-end padding.
    assert int(packed_rows["attention_mask"].sum()) == int(one_per_row["attention_mask"].sum())

    # Naive concatenation: positions run on across samples, so attention crosses them. (A
    # random tiny model attends almost uniformly, so the sum moves little; single tokens do.)
    naive = dict(packed_rows)
    naive["position_ids"] = torch.arange(naive["input_ids"].shape[1]).expand_as(naive["input_ids"])
    loss_n, _, grads_n, tokens_n = _loss_and_grads(model, task, naive)
    assert loss_n != pytest.approx(loss_a, rel=1e-5)
    assert (tokens_n - tokens_a).abs().max() > 1e-2
    assert not all(torch.allclose(grads_n[k], g, rtol=1e-4, atol=1e-6) for k, g in grads_a.items())


def test_flattened_packed_rows_give_the_same_loss_and_gradients(sft_tok):
    """Under flash attention the packed rows of a batch are joined into one row (its varlen
    kernel separates samples only within a row). The position ids keep samples apart in that
    row too: checked here with sdpa, which builds the same separation from them on CPU."""
    task, one_per_row, packed_rows = _batches(sft_tok)
    model = _model(sft_tok, task, "sdpa")
    loss_a, n_a, grads_a, tokens_a = _loss_and_grads(model, task, one_per_row)
    flash_task = SFTTask(max_length=task.max_length, packing=True, attn_implementation="flash_attention_2")

    class Flattened:  # the flash path's reshape, on the sdpa model (flash kernels need a GPU)
        def logits(self, model, batch, labels):
            assert flash_task.logits(_Recorder(), batch, labels)[1].shape[0] == 1  # one row
            return common.packed_forward(model, batch, labels, flatten=True)

    loss_b, n_b, grads_b, tokens_b = _loss_and_grads(model, Flattened(), packed_rows)
    assert n_a == n_b and loss_b == pytest.approx(loss_a, rel=1e-5)
    assert (tokens_b - tokens_a).abs().max() < 1e-5
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-6, msg=name)


class _Recorder:
    """A stand-in model that checks the flattened batch: one row, no mask, no cache."""

    def __call__(self, use_cache=None, **batch):
        assert use_cache is False and "attention_mask" not in batch
        assert all(v.shape[0] == 1 for v in batch.values())
        return type("Out", (), {"logits": torch.zeros(1, batch["input_ids"].shape[1], 2)})()


def test_a_kv_cache_would_let_packed_samples_see_each_other(sft_tok):
    """Why packed_forward passes use_cache=False: with the default (the model's config says
    use_cache=True) a cache object exists even in training, and transformers then ignores the
    packed position ids. The saved model keeps use_cache=True for generation."""
    task, one_per_row, packed_rows = _batches(sft_tok)
    model = _model(sft_tok, task, "sdpa")
    assert model.config.use_cache

    class WithCache:  # the model called without packed_forward's use_cache=False
        def __call__(self, use_cache=None, **batch):
            return model(**batch)

    _, _, _, tokens_a = _loss_and_grads(model, task, one_per_row)
    batch = {k: v for k, v in packed_rows.items() if k not in ("attention_mask", "labels")}
    with torch.no_grad():
        logits = WithCache()(**batch).logits
    labels = packed_rows["labels"].reshape(-1)
    keep = labels != X
    tokens_b = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep], labels[keep], reduction="none").sort().values
    assert (tokens_b - tokens_a).abs().max() > 1e-2


def test_baseline_labels_give_transformers_the_same_loss(sft_tok):
    """The benchmark's HF/raw runners train on unshifted labels (transformers shifts inside its
    loss); on the same samples that loss equals the task's own."""
    from llmtune.bench.runners import unpacked_samples

    task = SFTTask(max_length=192)
    model = _model(sft_tok, task, "sdpa")
    ours = task.preprocess(_raw(), sft_tok)["train"]
    theirs = unpacked_samples(task, sft_tok, SAMPLES)
    loss_ours, n, _, _ = _loss_and_grads(model, task, task.collator(sft_tok, train=True)([dict(r) for r in ours]))
    from transformers import DataCollatorForSeq2Seq

    batch = DataCollatorForSeq2Seq(sft_tok, label_pad_token_id=X)([{k: r[k] for k in ("input_ids", "labels")} for r in theirs])
    with torch.no_grad():
        mean = model(**batch).loss.item()
    assert mean * n == pytest.approx(loss_ours, rel=1e-5)


# ------------------------------------------------------------------ built-in data
def test_builtin_sft_data_is_deterministic_learnable_and_skewed():
    import re
    import statistics

    from llmtune.data.builtin import builtin_splits

    splits = builtin_splits("sft")
    assert splits == builtin_splits("sft") and builtin_splits("sft", seed=1)["train"] != splits["train"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 300, "test": 300}
    rows = splits["train"]
    assert all(set(r) == {"prompt", "response"} and r["prompt"] and r["response"] for r in rows)
    for r in rows:  # responses follow from prompts
        if m := re.fullmatch(r"What is (\d) plus (\d)\?", r["prompt"]):
            assert r["response"] == f"{m[1]} plus {m[2]} is {int(m[1]) + int(m[2])}."
    chars = sorted(len(r["prompt"]) + len(r["response"]) for r in rows)
    median = statistics.median(chars)
    assert median < 120 and chars[-1] > 8 * median  # mostly short, with a long tail
