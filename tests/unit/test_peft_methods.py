"""The PEFT methods beyond LoRA (conf/peft/<method>.yaml), in process on tiny models: each starts
from the base model's outputs, moves only what it trains, and saves, reloads and merges to the
same outputs. QLoRA's 4-bit path runs on CPU here (bitsandbytes has a CPU backend) but is slow
to import, so it is marked slow; on the command line it is refused without a CUDA GPU."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llmtune.errors import UserError
from llmtune.paths import conf_dir
from llmtune.tasks.clm import CLMTask
from llmtune.tasks.ner import NERTask

METHODS = ["dora", "rslora", "pissa", "lora_plus", "vera", "ia3", "ln_tuning"]
LABELS = 5
IDS = torch.randint(5, 120, (2, 9), generator=torch.Generator().manual_seed(0))


def method_of(name: str, **overrides):
    """The method as `peft=<name>` builds it (the shipped YAML), small where it matters."""
    from hydra.utils import instantiate

    node = OmegaConf.load(conf_dir() / "peft" / f"{name}.yaml")
    small = {"r": 4} if "r" in node and name != "vera" else {}
    if "dropout" in node:
        small["dropout"] = 0.0
    return instantiate(OmegaConf.merge(node, small, overrides))


def bert():
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=LABELS, hidden_dropout_prob=0, attention_probs_dropout_prob=0)
    return BertForTokenClassification(config).eval()


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


MODELS = {"bert-ner": (bert, NERTask, "AutoModelForTokenClassification"), "llama-clm": (llama, CLMTask, "AutoModelForCausalLM")}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def train_step(model, method) -> None:
    """One AdamW step on a loss that moves every trainable parameter, with the method's groups."""
    model.train()
    optimizer = torch.optim.AdamW(method.param_groups(model, 1e-2, 0.01), lr=1e-2)
    out = model(input_ids=IDS).logits
    (out.float() ** 2).mean().backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", METHODS)
def test_method_starts_at_the_base_trains_only_its_part_and_reloads(name, model_name, tmp_path):
    import transformers

    build, task_cls, auto = MODELS[model_name]
    base_out = logits(build())
    method = method_of(name)
    model = method.apply(build(), task_cls())
    assert method.method == name

    # Every method here starts from the base model's outputs (PiSSA: the residual is kept).
    torch.testing.assert_close(logits(model), base_out, atol=1e-5, rtol=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and frozen
    assert sum(p.numel() for p in trainable.values()) < sum(p.numel() for p in frozen.values())

    train_step(model, method)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} moved"
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    trained = logits(model)
    assert not torch.allclose(trained, base_out, atol=1e-4)

    # final/ as the job writes it, loaded back onto a fresh base as the verbs do.
    final = tmp_path / "final"
    method.save(model, final)
    loaded = method_of(name).load(str(final), getattr(transformers, auto), {}, base=build()).eval()
    torch.testing.assert_close(logits(loaded), trained, atol=1e-5, rtol=0)

    # export: one plain transformers model, saved and loaded with the Auto class alone.
    merged = method.merged(model)
    assert not any("lora_" in n or "vera_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "export")
    plain = getattr(transformers, auto).from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(logits(plain), trained, atol=1e-5, rtol=0)


def test_pissa_final_is_a_plain_lora_adapter_on_the_unchanged_base(tmp_path):
    import json

    from peft import PeftModel

    method = method_of("pissa")
    model = method.apply(bert(), NERTask())
    changed = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert not torch.allclose(changed, bert().bert.encoder.layer[0].attention.self.query.weight)  # the residual
    train_step(model, method)
    method.save(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)  # rank 2r, alpha/r kept
    # Plain peft on the original base, no PiSSA step at load: the same model.
    torch.testing.assert_close(logits(PeftModel.from_pretrained(bert(), tmp_path).eval()), logits(model), atol=1e-5, rtol=0)


def test_lora_plus_trains_b_at_ratio_times_lr():
    method = method_of("lora_plus", ratio=8)
    model = method.apply(bert(), NERTask())
    groups = method.param_groups(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        is_b = {".lora_B." in names[id(p)] for p in group["params"]}
        assert len(is_b) == 1
        assert group.get("lr", 1e-3) == pytest.approx(8e-3 if is_b.pop() else 1e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    from llmtune.peft.lora_plus import LoRAPlus

    with pytest.raises(UserError, match="ratio must be positive"):
        LoRAPlus(ratio=0)


def test_ia3_auto_targets_follow_the_architecture():
    from llmtune.peft.ia3 import narrowing

    config = method_of("ia3").apply(bert(), NERTask()).peft_config["default"]
    assert set(config.target_modules) == {"key", "value", "output.dense"}  # the paper's, from peft's table
    assert set(config.feedforward_modules) == {"output.dense"}
    # An architecture peft does not know: every linear layer, feed-forward = the narrowing ones.
    assert narrowing(["query", "dense"], bert(), ["classifier"]) == []  # dense: 32->32 and 32->64 too
    model = bert()
    assert narrowing(".*output\\.dense", model, ["classifier"]) == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    with pytest.raises(UserError, match="feedforward_modules"):
        method_of("ia3", target_modules=["key"], feedforward_modules=["value"]).apply(bert(), NERTask())


def test_ln_tuning_finds_the_norms_of_any_architecture():
    assert method_of("ln_tuning").targets(bert(), ["classifier"]) == ["LayerNorm"]
    assert method_of("ln_tuning").targets(llama(), []) == ["input_layernorm", "norm", "post_attention_layernorm"]
    with pytest.raises(UserError, match="matches no normalisation layer; those of BertForTokenClassification are LayerNorm"):
        method_of("ln_tuning", target_modules=["query"]).targets(bert(), ["classifier"])


def test_qlora_is_refused_without_a_cuda_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"trainer": {"cpu": False}})
    with pytest.raises(UserError, match=r"^peft=qlora needs a CUDA GPU and bitsandbytes .*missing here: a CUDA GPU\. Use peft=lora") as info:
        method_of("qlora").preflight(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_qlora_quantizes_the_base_and_merges_at_full_precision(tmp_path):
    """The 4-bit path on CPU (bitsandbytes' CPU backend): the same code as on CUDA but the device."""
    import bitsandbytes as bnb
    from transformers import AutoModelForTokenClassification

    from llmtune.peft.heads import count_parameters
    from llmtune.peft.lora import LoRA

    method = method_of("qlora", compute_dtype="float32")
    model = method.apply(bert(), NERTask())
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 12  # 6 linear layers x 2 blocks
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.base_model.model.classifier.modules())
    # The log's counts: the 4-bit weights count as many as they were, the same as LoRA's.
    assert count_parameters(model) == count_parameters(LoRA(r=4, dropout=0.0).apply(bert(), NERTask()))
    base_out = logits(method.prepare_base(bert()))
    torch.testing.assert_close(logits(model), base_out, atol=1e-5, rtol=0)  # LoRA on the 4-bit base starts at it
    train_step(model, method)
    trained = logits(model)
    method.save(model, tmp_path / "final")
    loaded = method_of("qlora", compute_dtype="float32").load(str(tmp_path / "final"), AutoModelForTokenClassification, {}, base=bert()).eval()
    torch.testing.assert_close(logits(loaded), trained, atol=1e-5, rtol=0)
    merged = method.merged(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    merged.save_pretrained(tmp_path / "export")
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(logits(plain), trained, atol=1e-4, rtol=0)
