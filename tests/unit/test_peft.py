"""PEFT methods on tiny models built from config: which parameters train, and how many."""

from __future__ import annotations

import pytest
import torch

from llmtune.errors import UserError
from llmtune.peft.bitfit import BitFit
from llmtune.peft.heads import count_parameters, linear_module_names, task_head_names
from llmtune.peft.lora import LoRA
from llmtune.peft.none import FullFineTune
from llmtune.tasks.classification import ClassificationTask
from llmtune.tasks.clm import CLMTask
from llmtune.tasks.ner import NERTask

HIDDEN, INTER, LAYERS, LABELS = 32, 64, 2, 5


def _bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=120, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=INTER, max_position_embeddings=64, **extra,
    )


def _token_cls():
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    return BertForTokenClassification(_bert_config(num_labels=LABELS))


def _seq_cls():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(_bert_config(num_labels=LABELS))


def _llama(cls_name: str = "LlamaForCausalLM"):
    import transformers
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, num_labels=3, pad_token_id=0,
    )
    return getattr(transformers, cls_name)(config)


def _trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------ heads
def test_task_head_names():
    from transformers import BertForMaskedLM

    assert task_head_names(_token_cls()) == ["classifier"]
    assert task_head_names(_seq_cls()) == ["classifier"]
    torch.manual_seed(0)
    mlm = BertForMaskedLM(_bert_config())
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    assert task_head_names(mlm) == []  # the LM head is the (tied) embedding matrix
    assert task_head_names(_llama()) == []
    assert task_head_names(_llama("LlamaForSequenceClassification")) == ["score"]


def test_linear_module_names_exclude_heads_and_lm_head():
    names = linear_module_names(_token_cls(), exclude=["classifier"])
    assert names == ["dense", "key", "query", "value"]
    assert "classifier" in linear_module_names(_token_cls(), exclude=[])
    llama = linear_module_names(_llama(), exclude=[])
    assert "lm_head" not in llama
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == set(llama)


# ------------------------------------------------------------------ LoRA
def test_lora_trains_adapters_and_classifier_only():
    model = LoRA(r=4, alpha=8, dropout=0.0).apply(_token_cls(), NERTask())
    trainable = _trainable(model)
    assert trainable
    for name in trainable:
        assert "lora_" in name or "classifier.modules_to_save" in name, name
    assert any("classifier.modules_to_save" in n for n in trainable)

    # r × (in + out) per targeted linear layer, per encoder layer:
    # query, key, value, attention.output.dense: H -> H; intermediate.dense: H -> I; output.dense: I -> H.
    r = 4
    per_layer = 4 * r * (HIDDEN + HIDDEN) + r * (HIDDEN + INTER) + r * (INTER + HIDDEN)
    classifier = HIDDEN * LABELS + LABELS
    expected = LAYERS * per_layer + classifier
    assert sum(trainable.values()) == expected
    assert count_parameters(model)[0] == expected

    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"query", "key", "value", "dense"}
    assert "classifier" not in targets
    assert not any("classifier" in n and "lora_" in n for n, _ in model.named_parameters())


def test_lora_leaves_the_outputs_unchanged_at_start():
    base = _token_cls().eval()
    ids = torch.randint(5, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = LoRA(r=4, dropout=0.0).apply(base, NERTask()).eval()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-6)  # lora_B starts at zero


def test_lora_on_a_decoder_targets_all_projections():
    model = LoRA(r=2, dropout=0.0).apply(_llama(), CLMTask())
    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all("lora_" in n for n in _trainable(model))


def test_lora_named_targets_are_checked():
    with pytest.raises(UserError, match="qkv_proj matches no linear layer"):
        LoRA(target_modules=["qkv_proj"]).apply(_token_cls(), NERTask())
    model = LoRA(r=2, target_modules=["query", "value"]).apply(_token_cls(), NERTask())
    names = [n for n in _trainable(model) if "lora_" in n]
    assert names and all(".query." in n or ".value." in n for n in names)


# ------------------------------------------------------------------ BitFit and full fine-tuning
@pytest.mark.parametrize(("build", "task"), [(_token_cls, NERTask()), (_seq_cls, ClassificationTask())])
def test_bitfit_trains_biases_and_head(build, task):
    model = BitFit().apply(build(), task)
    trainable = _trainable(model)
    for name in trainable:
        assert name.endswith(".bias") or name.startswith("classifier."), name
    assert "classifier.weight" in trainable and "classifier.bias" in trainable
    all_biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert set(all_biases) <= set(trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.endswith("query.weight") for n in frozen)
    assert any("embeddings" in n for n in frozen)


def test_bitfit_without_head():
    model = BitFit(train_head=False).apply(_token_cls(), NERTask())
    assert "classifier.weight" not in _trainable(model)
    assert "classifier.bias" in _trainable(model)


def test_bitfit_on_a_model_without_biases_raises():
    with pytest.raises(UserError, match="no bias"):
        BitFit().apply(_llama(), CLMTask())


def test_full_fine_tune_trains_everything():
    model = _token_cls()
    for p in model.parameters():
        p.requires_grad_(False)
    model = FullFineTune().apply(model, NERTask())
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
