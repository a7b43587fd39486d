"""Prompt learning (prompt_tuning, prefix, p_tuning) and bottleneck adapters on tiny models built
from config: what trains, where training starts, logits aligned with the real tokens,
generation as in training, and final/ loading back to the same model."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXED_TOKENIZER
from llmtune.errors import UserError
from llmtune.peft.adapter import BottleneckAdapter
from llmtune.peft.heads import count_parameters
from llmtune.peft.p_tuning import PTuning
from llmtune.peft.prefix import PrefixTuning
from llmtune.peft.prompt_learning import pools_last_position
from llmtune.peft.prompt_tuning import PromptTuning
from llmtune.tasks.ner import NERTask
from llmtune.tasks.sft import SFTTask

V = 3  # virtual tokens
IDS = torch.randint(5, 120, (2, 7), generator=torch.Generator().manual_seed(0))


def _bert(cls: str = "BertForTokenClassification"):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return getattr(transformers, cls)(config)


def _llama(cls: str = "LlamaForCausalLM"):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, num_labels=3,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return getattr(transformers, cls)(config)


# (method, base model, task): every method on a model and task it supports.
CASES = {
    "prompt_tuning": (lambda: PromptTuning(V), _bert, NERTask),
    "p_tuning": (lambda: PTuning(V, encoder_hidden_size=16), _bert, NERTask),
    "prefix": (lambda: PrefixTuning(V, encoder_hidden_size=16), _llama, SFTTask),
    "adapter": (lambda: BottleneckAdapter(reduction=4), _bert, NERTask),
    "adapter-llama": (lambda: BottleneckAdapter(config="pfeiffer", reduction=4, non_linearity="swish"), _llama, SFTTask),
}


def _built(case: str):
    method, base, task = CASES[case]
    method = method()
    return method, method.apply(base(), task()), base


@pytest.mark.parametrize("case", list(CASES))
def test_a_step_moves_only_what_trains(case):
    method, model, _ = _built(case)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits.float().pow(2).mean().backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert moved and not moved & frozen, sorted(moved & frozen)[:3]


@pytest.mark.parametrize("config", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("build", [_bert, _llama])
def test_adapters_start_at_the_base_model(config, build):
    base = build().eval()
    with torch.no_grad():
        expected = base(input_ids=IDS).logits.clone()
    model = BottleneckAdapter(config=config, reduction=4).apply(base, NERTask()).eval()
    adapters = {n.rsplit(".adapter.", 1)[0] for n, p in model.named_parameters() if ".adapter." in n}
    assert len(adapters) == 2 * (2 if config == "houlsby" else 1)  # per layer: after attention (houlsby) and after feed-forward
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, expected)


def test_adapter_trains_adapters_and_head_only():
    model = BottleneckAdapter(reduction=4).apply(_bert(), NERTask())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".adapter." in n or n.startswith("classifier.") for n in names)
    # per layer: after attention.output.dense and output.dense, each 32 -> 8 -> 32; the classifier 32 -> 3.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 2 * (32 * 8 + 8 + 8 * 32 + 32) + 32 * 3 + 3


def test_adapter_refuses_an_unknown_architecture_and_takes_named_targets():
    import transformers

    config = transformers.GPTNeoXConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3)
    with pytest.raises(UserError, match=r"peft\.targets=\[\.\.\.\].*dense_4h_to_h"):
        BottleneckAdapter().apply(transformers.GPTNeoXForTokenClassification(config), NERTask())
    model = BottleneckAdapter(targets=["mlp.dense_4h_to_h"], reduction=4).apply(transformers.GPTNeoXForTokenClassification(config), NERTask())
    assert {n.split(".adapter.")[0] for n, p in model.named_parameters() if ".adapter." in n} == {"gpt_neox.layers.0.mlp.dense_4h_to_h"}


@pytest.mark.parametrize("method", [PromptTuning(V), PTuning(V, encoder_hidden_size=16)])
def test_prompt_learning_ner_logits_are_the_real_tokens(method):
    """peft returns logits for the virtual positions too; the method cuts exactly those: the
    base model run on [prompt; tokens] gives the same logits at the token positions."""
    model = method.apply(_bert(), NERTask()).eval()
    mask = torch.ones_like(IDS)
    mask[1, 5:] = 0
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=mask).logits
        prompt = model.get_prompt(batch_size=2)
        embeds = torch.cat([prompt, model.get_input_embeddings()(IDS)], dim=1)
        full = model.get_base_model()(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(2, V), mask], dim=1)).logits
    assert logits.shape == (*IDS.shape, 3)
    torch.testing.assert_close(logits, full[:, V:], atol=1e-6, rtol=0)
    labels = torch.randint(0, 3, IDS.shape)
    assert torch.isfinite(NERTask().loss(logits, labels))  # the task's loss takes them as they are


@pytest.mark.parametrize("case", ["prompt_tuning", "prefix"])
def test_generation_scores_each_token_as_the_forward_pass(case):
    """Greedy generation (as llmtune predict runs it) sees the virtual tokens at every step:
    each step's scores equal a plain forward pass over the sequence so far."""
    method = PromptTuning(V) if case == "prompt_tuning" else PrefixTuning(V, encoder_hidden_size=16)
    model = method.apply(_llama(), SFTTask()).eval()
    ids = IDS[:1]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, eos_token_id=None,
                             output_scores=True, return_dict_in_generate=True)
        for k, scores in enumerate(out.scores):
            seq = out.sequences[:, : ids.shape[1] + k]
            torch.testing.assert_close(scores, model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1], atol=1e-5, rtol=0)


def test_prompt_tuning_text_init_uses_the_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXED_TOKENIZER)
    method = PromptTuning(5, init_text="Paris is in France", tokenizer=str(FIXED_TOKENIZER))
    base = _bert()
    base.resize_token_embeddings(len(tokenizer))
    model = method.apply(base, NERTask())
    ids = tokenizer("Paris is in France", add_special_tokens=False)["input_ids"]
    ids = (ids * 5)[:5]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, model.get_input_embeddings().weight[ids])


def test_a_classifier_that_pools_the_last_position_is_found():
    assert pools_last_position(_llama("LlamaForSequenceClassification"))
    assert not pools_last_position(_bert("BertForSequenceClassification"))
    with pytest.raises(UserError, match="pools the last position"):
        from llmtune.tasks.classification import ClassificationTask

        PromptTuning(V).apply(_llama("LlamaForSequenceClassification"), ClassificationTask())


@pytest.mark.parametrize("case", list(CASES))
def test_final_loads_back_to_the_same_model(case, tmp_path):
    import transformers

    method, model, base = _built(case)
    with torch.no_grad():  # trained-looking weights: what is saved is not the initial state
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    method.save(model, tmp_path)
    auto = transformers.AutoModelForCausalLM if base is _llama else transformers.AutoModelForTokenClassification
    loaded = method.load(str(tmp_path), auto, {}, base=base()).eval()  # base: rebuilt from its config and seed, as llmtune's loader does
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-6, rtol=0)
    assert method.merged(loaded) is None  # nothing to fold into the weights: export keeps it as it is
