"""Tokenizers from the `model` config group: the named one, checked, or one trained on the
training text; then the task's special tokens. The model itself is llmtune.models'.

- A model built from scratch (`model.config`, no name) gets a tokenizer trained on the training
  text: WordPiece with BERT-style pre-tokenization and special tokens for encoders, byte-level
  BPE for decoders.
- A named tokenizer is checked before use: a local model folder without tokenizer files is
  refused (transformers would build an empty tokenizer that maps every word to [UNK]), and a
  tokenizer that maps many words of the training text to its unknown token is warned about.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

from llmtune.errors import UserError
from llmtune.models import hub_error, model_source, resolve

log = logging.getLogger("llmtune")


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
            # The model's own tokenizer loads from where its weights do (a GGUF's conversion).
            source = resolve(name) if model_cfg.tokenizer else model_source(model_cfg)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise hub_error(key, name, exc) from None
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
    if task.split_into_words:
        mark_word_starts(tokenizer)
    add_task_tokens(tokenizer, task)
    return tokenizer


def add_task_tokens(tokenizer, task) -> None:
    """The task's special tokens (Task.special_tokens: e.g. entity markers), added whole."""
    vocab = tokenizer.get_vocab()
    new = [token for token in task.special_tokens() if token not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
        log.info("added %d special tokens of task=%s to the tokenizer (%s%s)", len(new), task.name, ", ".join(new[:4]), ", ..." if len(new) > 4 else "")


def _byte_level_parts(pre_tokenizer) -> list:
    """The ByteLevel pre-tokenizers in `pre_tokenizer` (itself, or inside a Sequence)."""
    from tokenizers import pre_tokenizers

    if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel):
        return [pre_tokenizer]
    if isinstance(pre_tokenizer, pre_tokenizers.Sequence):
        parts, i = [], 0
        while True:
            try:
                parts += _byte_level_parts(pre_tokenizer[i])
            except IndexError:
                return parts
            i += 1
    return []


def mark_word_starts(tokenizer) -> None:
    """Make a byte-level BPE tokenizer (GPT-2, Llama 3, the one trained here for decoders)
    tokenize pre-split words as running text does. It marks a word start by the space before
    it ('ĠBerg'), and a pre-split word has none: 'Berg' would become pieces the vocabulary
    was not trained on ('B', 'er', 'g'). add_prefix_space=True, the documented setting for
    is_split_into_words, gives every word its space; it is saved with the tokenizer.
    WordPiece and SentencePiece (Metaspace) tokenizers already mark each word: unchanged."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = _byte_level_parts(backend.pre_tokenizer) if backend is not None else []
    if not parts or all(part.add_prefix_space for part in parts):
        return
    for part in parts:
        part.add_prefix_space = True  # in place, on the tokenizer's own pre-tokenizer
    # Tokenizer classes that rebuild their pre-tokenizer from this setting when loaded (GPT-2's).
    tokenizer.add_prefix_space = True
    tokenizer.init_kwargs["add_prefix_space"] = True


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
