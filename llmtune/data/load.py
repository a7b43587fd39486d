"""Raw data for a run (files, a hub dataset, or built-in samples) and its tokenized, cached form.

Every split is a `datasets.Dataset` with the task's column names (renamed through
`data.columns`); its `info.description` says where it came from, for error messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path

from llmtune import __version__
from llmtune.errors import UserError, did_you_mean

log = logging.getLogger("llmtune")
SPLIT_KEYS = (("train", "train_file"), ("validation", "validation_file"), ("test", "test_file"))
# Names hub datasets use for the splits llmtune calls validation and test.
SPLIT_ALIASES = {"valid": "validation", "dev": "validation", "val": "validation", "eval": "test"}
BUILTIN_SEED = 0  # built-in data is the same for every training seed: results stay comparable


def _sha(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def load_raw(data_cfg, task, seed: int):
    """(DatasetDict with train and maybe validation/test, content fingerprint)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    from llmtune.data.builtin import builtin_splits

    renames = dict(data_cfg.columns or {})
    splits: dict[str, Dataset] = {}
    if data_cfg.train_file:
        digests = {}
        for split, key in SPLIT_KEYS:
            path = data_cfg.get(key)
            if not path:
                continue
            path = Path(str(path)).expanduser().resolve()
            splits[split] = read_split(path, key, task, renames)
            digests[split] = hashlib.sha256(path.read_bytes()).hexdigest()
        fingerprint = _sha(digests)
    elif data_cfg.name:
        splits, fingerprint = _load_hub(data_cfg, task, renames)
    else:
        generated = builtin_splits(task.builtin, seed=BUILTIN_SEED)
        for split, rows in generated.items():
            splits[split] = Dataset.from_list(rows, info=DatasetInfo(description=f"built-in {task.builtin} data ({split})"))
        fingerprint = _sha({"builtin": task.builtin, "version": __version__, "rows": _sha(generated)})

    if "validation" not in splits and data_cfg.validation_split:
        rows = len(splits["train"])
        size = held_out_size(data_cfg.validation_split, data_cfg.get("validation_split_max"), rows)
        if rows < 2 or (size if isinstance(size, int) else math.ceil(size * rows)) >= rows:
            raise UserError(
                f"data.validation_split={data_cfg.validation_split}: the training data has {rows} example(s), too few to hold "
                "any out; add rows, give data.validation_file, or set data.validation_split=null to train without validation."
            )
        held = splits["train"].train_test_split(test_size=size, seed=seed, shuffle=True)
        splits["train"], splits["validation"] = held["train"], held["test"]
        capped = "" if size == data_cfg.validation_split else f", capped at {size} rows"
        splits["validation"].info.description = f"{splits['train'].info.description} (validation_split {data_cfg.validation_split}{capped})"
        fingerprint = _sha([fingerprint, size, seed])  # size is validation_split itself unless capped
    for split, ds in list(splits.items()):
        limit = data_cfg.max_train_samples if split == "train" else data_cfg.max_eval_samples
        if limit is not None and len(ds) > limit:
            splits[split] = ds.select(range(limit))
    fingerprint = _sha([fingerprint, data_cfg.max_train_samples, data_cfg.max_eval_samples])
    return DatasetDict(splits), fingerprint


def read_split(path: Path, key: str, task, renames: dict):
    """One data file (the value of data.<key>) as a split: columns renamed by data.columns,
    the task's required columns checked; its description names the key and file."""
    from llmtune.data.readers import read_rows, require_columns, to_dataset

    path = Path(str(path)).expanduser().resolve()
    rows = [{renames.get(k, k): v for k, v in row.items()} for row in read_rows(path, key=f"data.{key}")]
    require_columns(rows, list(task.required_columns), path=path, key=f"data.{key}")
    return to_dataset(rows, path=path, key=f"data.{key}", description=f"data.{key}: {path}")


def held_out_size(fraction: float, cap: int | None, rows: int) -> float | int:
    """train_test_split's test_size for data.validation_split: the fraction itself, or at most
    `cap` rows (data.validation_split_max). Evaluation time grows with the split while its noise
    shrinks only as 1/sqrt(rows), so past a few thousand rows a bigger split mostly delays
    training (and a stop signal); the rows not held out stay in training."""
    wanted = math.ceil(fraction * rows) if fraction < 1 else int(fraction)  # as train_test_split counts
    if cap is None or wanted <= cap:
        return fraction
    log.info("data.validation_split=%s would hold out %d of %d training examples; holding out %d (data.validation_split_max), "
             "the other %d stay in training", fraction, wanted, rows, cap, wanted - cap)
    return int(cap)


def _load_hub(data_cfg, task, renames: dict):
    import datasets

    try:
        loaded = datasets.load_dataset(data_cfg.name, data_cfg.config_name)
    except Exception as exc:  # noqa: BLE001 — hub and builder errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"data.name={data_cfg.name}: could not load this hub dataset ({first}). Offline, use data.train_file=... "
            "or leave data.name unset for the built-in sample data."
        ) from None
    splits = {}
    for name, ds in loaded.items():
        ds = _labels_as_names(ds).rename_columns({k: v for k, v in renames.items() if k in ds.column_names})
        missing = [c for c in task.required_columns if c not in ds.column_names]
        if missing:
            raise UserError(
                f"data.name={data_cfg.name} ({name} split) has no column '{missing[0]}' (columns: {', '.join(ds.column_names)})."
                f"{did_you_mean(missing[0], ds.column_names)} Map it with data.columns={{SOURCE: {missing[0]}}}."
            )
        ds.info.description = f"data.name={data_cfg.name} ({name} split)"
        splits[SPLIT_ALIASES.get(name, name)] = ds
    if "train" not in splits:
        raise UserError(f"data.name={data_cfg.name} has no train split (splits: {', '.join(loaded)}).")
    splits = {k: v for k, v in splits.items() if k in ("train", "validation", "test")}
    # A split whose labels are hidden (GLUE's test split: all -1, now None) cannot be evaluated.
    if "test" in splits and "label" in splits["test"].column_names and all(v is None for v in splits["test"]["label"]):
        log.info("data.name=%s: the test split has no labels; evaluating on validation only", data_cfg.name)
        del splits["test"]
    return splits, _sha({k: v._fingerprint for k, v in splits.items()})


def _labels_as_names(ds):
    """ClassLabel ids -> label names, so tasks see the same strings as from files. A hidden
    label (-1, as in GLUE's test split) becomes None."""
    from datasets import ClassLabel, List, Sequence, Value

    for column, feature in ds.features.items():
        inner = feature.feature if isinstance(feature, (Sequence, List)) else None
        if isinstance(feature, ClassLabel):
            as_names = lambda b, c=column, n=feature.names: {c: [n[i] if i >= 0 else None for i in b[c]]}  # noqa: E731
            kind = Value("string")
        elif isinstance(inner, ClassLabel):
            as_names = lambda b, c=column, n=inner.names: {c: [[n[i] for i in row] for row in b[c]]}  # noqa: E731
            kind = List(Value("string"))
        else:
            continue
        features = ds.features.copy()
        features[column] = kind
        ds = ds.map(as_names, batched=True, features=features)
    return ds


def _drop_unlabelled(data):
    """Drop examples in which every label is ignored (e.g. everything truncated away): they
    would add nothing but a misleading zero to the loss. Counted and reported."""
    from llmtune.tasks.base import IGNORE_INDEX

    for split, ds in data.items():
        if "labels" not in ds.column_names or not ds or not isinstance(ds[0]["labels"], list):
            continue
        kept = ds.filter(lambda b: [any(x != IGNORE_INDEX for x in row) for row in b["labels"]], batched=True)
        if len(kept) < len(ds):
            log.warning("%s: dropped %d of %d examples with no labelled token (check task.max_length)", split, len(ds) - len(kept), len(ds))
            data[split] = kept
    return data


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return _sha([body, tokenizer.special_tokens_map])


def tokenize(raw, task, tokenizer, data_cfg, fingerprint: str, accelerator):
    """task.preprocess with an on-disk cache keyed by data, task settings and tokenizer."""
    from datasets import load_from_disk

    task_settings = asdict(task) if is_dataclass(task) else {}
    num_proc = data_cfg.get("num_proc")
    # num_proc is in the key: LM tasks pack blocks within each shard, so it shapes the blocks.
    key = _sha([fingerprint, type(task).__name__, task_settings, list(task.labels), tokenizer_fingerprint(tokenizer), num_proc, __version__])[:20]
    path = Path(str(data_cfg.cache_dir)).expanduser() / "tokenized" / key
    with accelerator.main_process_first():
        if data_cfg.cache and (path / "dataset_dict.json").is_file():
            log.info("tokenized data: cache hit, skipped tokenization (%s)", path)
            return load_from_disk(str(path))
        processed = _drop_unlabelled(task.preprocess(raw, tokenizer, **({"num_proc": num_proc} if num_proc else {})))
        if data_cfg.cache and accelerator.is_main_process:
            # A folder of this process's own: two runs on the same data may tokenize at once.
            tmp = path.with_name(f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            processed.save_to_disk(str(tmp))
            try:
                tmp.replace(path)
            except OSError:  # another run finished the same cache first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("tokenized data: cached at %s", path)
            processed = load_from_disk(str(path))
        return processed
