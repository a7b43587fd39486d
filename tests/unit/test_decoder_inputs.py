"""Encoder tasks on a decoder backbone (Llama-style): the pad token the sequence classifier
looks for, and pre-split words (NER, relation) tokenized by a byte-level BPE tokenizer."""

from __future__ import annotations

import copy

import torch
from omegaconf import OmegaConf

from conftest import corpus_lines
from llmtune.models import load_model
from llmtune.tasks.classification import ClassificationTask
from llmtune.tasks.ner import NERTask
from llmtune.tokenization import load_tokenizer, mark_word_starts

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": True}


def _model_cfg(**over):
    cfg = {"name_or_path": None, "config": LLAMA, "tokenizer": None, "tokenizer_vocab_size": 300, "attn_implementation": None,
           "pad_vocab_to_multiple_of": None, "trust_remote_code": False, "reinit_head": False}
    return OmegaConf.create({**cfg, **over})


def test_split_words_are_tokenized_as_in_running_text(gpt_tok):
    tok = copy.deepcopy(gpt_tok)
    words = "the cat sat on the mat".split()
    running = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    split = tok(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert split != running  # without a space before each word, pieces the vocabulary rarely saw
    mark_word_starts(tok)
    marked = tok(words, is_split_into_words=True, add_special_tokens=False)
    later = [i for i, w in zip(marked["input_ids"], marked.word_ids(), strict=True) if w >= 1]
    assert later == tok(" " + " ".join(words[1:]), add_special_tokens=False)["input_ids"]  # each word as in running text
    assert "add_prefix_space" in str(tok.backend_tokenizer.pre_tokenizer)


def test_mark_word_starts_survives_saving(gpt_tok, tmp_path):
    from transformers import AutoTokenizer

    tok = copy.deepcopy(gpt_tok)
    mark_word_starts(tok)
    tok.save_pretrained(tmp_path)
    words = "Anna lives in Oslo".split()
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(words, is_split_into_words=True)["input_ids"] == tok(words, is_split_into_words=True)["input_ids"]


def test_word_tasks_get_word_starts_and_text_tasks_do_not():
    texts = corpus_lines()
    ner = load_tokenizer(_model_cfg(), NERTask(), iter(texts))
    cls = load_tokenizer(_model_cfg(), ClassificationTask(), iter(texts))
    assert "add_prefix_space=True" in str(ner.backend_tokenizer.pre_tokenizer)
    assert "add_prefix_space=False" in str(cls.backend_tokenizer.pre_tokenizer)  # running text keeps its tokens


def test_the_sequence_classifier_reads_the_last_real_token_whatever_the_padding(gpt_tok, tmp_path):
    """Llama has no pad token: the tokenizer pads with EOS, and the model's config must name that
    id (here the checkpoint names another), or the classifier scores padding. Left- and
    right-padded batches then give the answers of each text alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = copy.deepcopy(gpt_tok)
    tok.pad_token = tok.eos_token  # as load_tokenizer does for a tokenizer without one
    config = {k: v for k, v in LLAMA.items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**config, vocab_size=len(tok), pad_token_id=1)).save_pretrained(tmp_path)
    task = ClassificationTask()
    task.labels = ["a", "b", "c"]
    torch.manual_seed(0)
    model = load_model(_model_cfg(name_or_path=str(tmp_path), config=None), task, tok, task.model_kwargs()).eval()
    assert model.config.pad_token_id == tok.pad_token_id == tok.eos_token_id
    texts = ["the cat sat on the mat", "a dog"]
    alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    for side in ("right", "left"):
        tok.padding_side = side
        batch = model(**tok(texts, padding=True, return_tensors="pt")).logits
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)


def test_lora_on_a_decoder_classifier_trains_the_score_head(gpt_tok):
    from llmtune.peft.lora import LoRA

    task = ClassificationTask()
    task.labels = ["a", "b"]
    torch.manual_seed(0)
    model = LoRA(r=2).apply(load_model(_model_cfg(), task, copy.deepcopy(gpt_tok), task.model_kwargs()), task)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(".score." in name and "modules_to_save" in name for name in trainable)
    assert any("lora_A" in name for name in trainable)
