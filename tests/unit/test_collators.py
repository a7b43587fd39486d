"""Collators: padding, label shapes, -100 where nothing is predicted, MLM masking, CLM shifting."""

from __future__ import annotations

import torch

from llmtune.tasks.base import IGNORE_INDEX
from llmtune.tasks.classification import ClassificationTask
from llmtune.tasks.clm import CLMTask, shift_labels
from llmtune.tasks.mlm import MLMTask
from llmtune.tasks.ner import NERTask

X = IGNORE_INDEX


def _encode(tokenizer, texts):
    return [dict(tokenizer(t)) for t in texts]


# ------------------------------------------------------------------ classification
def test_classification_collator_pads_and_labels_are_one_per_example(bert_tok):
    texts = ["The market opens.", "A baker sets out loaves that are still warm from the oven.", "Hi"]
    features = _encode(bert_tok, texts)
    for f, label in zip(features, [1, 0, 2], strict=True):
        f["labels"] = label
    batch = ClassificationTask().collator(bert_tok, train=True)(features)
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (3, longest)
    assert batch["attention_mask"].shape == (3, longest)
    assert batch["labels"].shape == (3,)
    assert batch["labels"].tolist() == [1, 0, 2]
    assert batch["labels"].dtype == torch.long
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][row, n:] == bert_tok.pad_token_id).all()
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]


def test_classification_collator_is_the_same_for_eval(bert_tok):
    features = _encode(bert_tok, ["one two", "three"])
    for f in features:
        f["labels"] = 1
    task = ClassificationTask()
    a, b = task.collator(bert_tok, train=True)(features), task.collator(bert_tok, train=False)(features)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ NER
def _ner_features(bert_tok, label_all_tokens: bool):
    from datasets import Dataset, DatasetDict

    rows = [
        {"tokens": ["Bartholomew", "Whitcombe", "sells", "bread"], "tags": ["B-PER", "I-PER", "O", "O"]},
        {"tokens": ["Oslo"], "tags": ["B-LOC"]},
    ]
    raw = DatasetDict({"train": Dataset.from_list(rows)})
    task = NERTask(label_all_tokens=label_all_tokens)
    task.setup(raw)
    data = task.preprocess(raw, bert_tok)["train"]
    return task, [dict(r) for r in data]


def test_ner_collator_pads_labels_with_ignore_index(bert_tok):
    task, features = _ner_features(bert_tok, label_all_tokens=False)
    batch = task.collator(bert_tok, train=True)(features)
    length = batch["input_ids"].shape[1]
    assert batch["labels"].shape == batch["input_ids"].shape
    short = len(features[1]["input_ids"])
    assert short < length
    assert (batch["labels"][1, short:] == X).all()
    assert batch["labels"][1, :short].tolist() == features[1]["labels"]
    assert batch["labels"][0].tolist() == features[0]["labels"]
    assert "word_labels" not in batch


def test_ner_collator_train_uses_all_subwords_eval_uses_first_subword(bert_tok):
    task, features = _ner_features(bert_tok, label_all_tokens=True)
    train = task.collator(bert_tok, train=True)(features)
    evaluation = task.collator(bert_tok, train=False)(features)
    assert torch.equal(train["input_ids"], evaluation["input_ids"])
    n_train = int((train["labels"] != X).sum())
    n_eval = int((evaluation["labels"] != X).sum())
    assert n_eval == 4 + 1  # one label per word
    assert n_train > n_eval  # "Bartholomew" and "Whitcombe" are split into several subwords
    # Wherever eval has a label, train has the same one (the first subword).
    where = evaluation["labels"] != X
    assert torch.equal(train["labels"][where], evaluation["labels"][where])


def test_ner_collator_without_label_all_tokens_train_equals_eval(bert_tok):
    task, features = _ner_features(bert_tok, label_all_tokens=False)
    train = task.collator(bert_tok, train=True)(features)
    evaluation = task.collator(bert_tok, train=False)(features)
    assert torch.equal(train["labels"], evaluation["labels"])


# ------------------------------------------------------------------ MLM
def _mlm_features(bert_tok, rows: int, length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    specials = set(bert_tok.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(bert_tok)) if i not in specials])
    features = []
    for r in range(rows):
        n = length - (r % 7)  # different lengths -> padding in the batch
        body = ordinary[torch.randint(len(ordinary), (n - 2,), generator=generator)].tolist()
        features.append({"input_ids": [bert_tok.cls_token_id, *body, bert_tok.sep_token_id]})
    return features


def test_mlm_labels_only_on_masked_positions(bert_tok):
    features = _mlm_features(bert_tok, rows=64, length=100)
    torch.manual_seed(0)
    batch = MLMTask(mlm_probability=0.15).collator(bert_tok, train=True)(features)
    original = torch.full_like(batch["input_ids"], bert_tok.pad_token_id)
    for row, f in enumerate(features):
        original[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
    labels, inputs, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    picked = labels != X

    # Labels are the original tokens where picked, -100 everywhere else.
    assert torch.equal(labels[picked], original[picked])
    # Never on special tokens or padding.
    special = torch.isin(original, torch.tensor(bert_tok.all_special_ids))
    assert not (picked & special).any()
    assert not (picked & (mask == 0)).any()
    # Unpicked positions are left alone.
    assert torch.equal(inputs[~picked], original[~picked])

    # About 15% of the maskable tokens are picked; of those about 80% become [MASK].
    maskable = int((~special & (mask == 1)).sum())
    assert maskable > 5000
    rate = int(picked.sum()) / maskable
    assert 0.13 < rate < 0.17, rate
    masked = int((inputs[picked] == bert_tok.mask_token_id).sum()) / int(picked.sum())
    assert 0.74 < masked < 0.86, masked
    kept = int((inputs[picked] == original[picked]).sum()) / int(picked.sum())
    assert 0.05 < kept < 0.16, kept


def test_mlm_train_masking_is_dynamic(bert_tok):
    features = _mlm_features(bert_tok, rows=8, length=60)
    collate = MLMTask().collator(bert_tok, train=True)
    torch.manual_seed(1)
    first = collate(features)
    second = collate(features)
    assert not torch.equal(first["labels"], second["labels"])
    torch.manual_seed(1)
    again = collate(features)
    assert torch.equal(first["labels"], again["labels"])  # seeded by the global RNG: reproducible


def test_mlm_eval_masking_is_deterministic(bert_tok):
    features = _mlm_features(bert_tok, rows=8, length=60)
    collate = MLMTask().collator(bert_tok, train=False)
    torch.manual_seed(1)
    first = collate(features)
    torch.manual_seed(2)
    second = collate(features)
    assert torch.equal(first["labels"], second["labels"])
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert (first["labels"] != X).any()


def test_mlm_eval_masks_do_not_depend_on_the_batch_a_row_is_in(bert_tok):
    """The same block must be masked the same way at every evaluation "whatever the batching"
    (llmtune/tasks/mlm.py), e.g. with another eval_batch_size or number of processes."""
    features = _mlm_features(bert_tok, rows=8, length=60)
    short = min(features, key=lambda f: len(f["input_ids"]))
    n = len(short["input_ids"])
    collate = MLMTask().collator(bert_tok, train=False)
    alone = collate([short])
    longest = max(features, key=lambda f: len(f["input_ids"]))
    together = collate([short, longest])
    assert together["input_ids"].shape[1] > n
    assert torch.equal(alone["labels"][0], together["labels"][0, :n])


# ------------------------------------------------------------------ CLM
def test_shift_labels_predicts_the_next_token():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = shift_labels(ids, mask)
    assert labels.tolist() == [[6, 7, 8, X], [10, X, X, X]]
    for t in range(3):
        real = mask[:, t + 1] == 1
        assert torch.equal(labels[real, t], ids[real, t + 1])
    assert (labels[:, -1] == X).all()


def test_shift_labels_keeps_a_real_eos_that_is_also_the_pad_token():
    eos = pad = 2
    ids = torch.tensor([[5, 6, eos, 7], [5, eos, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = shift_labels(ids, mask)
    assert labels.tolist() == [[6, eos, 7, X], [eos, X, X, X]]


def test_clm_collator_with_pad_equal_to_eos(gpt_tok):
    import copy

    tokenizer = copy.deepcopy(gpt_tok)
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    features = [{"input_ids": [10, 11, 12, eos, 13]}, {"input_ids": [14, eos]}]
    batch = CLMTask().collator(tokenizer, train=True)(features)
    assert batch["input_ids"].tolist() == [[10, 11, 12, eos, 13], [14, eos, eos, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[11, 12, eos, 13, X], [eos, X, X, X, X]]


def test_clm_preprocess_packs_blocks_separated_by_eos(gpt_tok):
    from datasets import Dataset, DatasetDict

    texts = ["The morning market opens.", "Farmers arrive with baskets.", "A baker sets out loaves."]
    raw = DatasetDict({"train": Dataset.from_list([{"text": t} for t in texts])})
    data = CLMTask(max_length=8).preprocess(raw, gpt_tok)["train"]
    blocks = data["input_ids"]
    assert all(len(b) == 8 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 8
    flat = [t for b in blocks for t in b]
    assert flat.count(gpt_tok.eos_token_id) == len(texts)
    expected = [t for text in texts for t in [*gpt_tok(text, add_special_tokens=False)["input_ids"], gpt_tok.eos_token_id]]
    assert flat == expected
