"""Checkpoints: atomic save, rotation that never loses the last good one, and resume.

Layout of `checkpoints/step-N/`:
    trainable.safetensors  the parameters that train (all of them in a full fine-tune; the
                           adapter and head with LoRA) — the rest is rebuilt from the config
    optimizer.pt, scheduler.pt
    rng-rank{R}.pt         python, numpy and torch RNG states of each process, as plain ints,
                           lists and tensors
    state.json             step, epoch, position in the epoch, best metric, run fingerprint,
                           and the size of every other file (written last)

Under FSDP (distributed=fsdp) no process holds the whole model, so the trainable weights and the
optimizer state go to `sharded/` instead of trainable.safetensors and optimizer.pt: every
process writes its own part with torch.distributed.checkpoint, and a resume reads each part
back. Under DeepSpeed they go to
`deepspeed/` through accelerate's save_state. The rest of the layout and every guarantee below
are the same.

A checkpoint is written under a temporary name and renamed into place when complete, so a
process killed mid-save leaves the previous checkpoints intact and no half-written `step-N`.
A checkpoint whose files do not match the sizes in its state.json (truncated, damaged) is
skipped when resuming. Rotation deletes old checkpoints only after the new one is complete.

A checkpoint may come from someone else, so loading one must not run code: every .pt file is
read with torch.load(weights_only=True), which builds tensors and plain containers only, and a
file holding anything else is refused with one line (exit 2). The size check runs first and
never unpickles: a file whose size does not match state.json is damage, skipped by
trainer.resume=auto with a warning; a file of the right size that a safe load refuses is not
damage but a foreign or tampered checkpoint, and the resume stops there rather than falling
back to an older one without a word. Outside this guarantee: under FSDP, torch's distributed
checkpoint reads `sharded/.metadata` with plain pickle (and non-tensor entries with
torch.load(weights_only=False)); under DeepSpeed, the DeepSpeed engine reads its own files.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmtune.errors import TrainingError, UserError

log = logging.getLogger("llmtune")
STEP_DIR = re.compile(r"^step-(\d+)$")
SHARDED_DIR = "sharded"      # FSDP: trainable weights + optimizer, one shard file per process
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed: its own checkpoint format, through accelerate


@dataclass
class TrainState:
    step: int = 0                 # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0       # micro-batches of this epoch already consumed (this process)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    tokens_seen: int = 0          # non-pad input tokens, this process
    fingerprint: dict = field(default_factory=dict)   # what a resume must match


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary and foreign folders are ignored)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_loadable(path: Path) -> bool:
    """Complete and undamaged as far as cheap checks tell: state.json parses, every file it
    lists has its recorded size, and the weights' header reads."""
    try:
        saved = json.loads((path / "state.json").read_text())
        sizes = saved["files"]
        if any((path / name).stat().st_size != size for name, size in sizes.items()):
            return False
        layout = _layout(sizes)
        if layout == "sharded":
            from torch.distributed.checkpoint import FileSystemReader

            FileSystemReader(str(path / SHARDED_DIR)).read_metadata()
            return True
        if layout == "deepspeed":
            return True
        from safetensors import safe_open

        with safe_open(str(path / "trainable.safetensors"), framework="pt") as f:
            f.keys()
    except Exception:  # noqa: BLE001 — any failure to read means unusable
        return False
    return "trainable.safetensors" in sizes and "optimizer.pt" in sizes


def _layout(files) -> str:
    """"sharded" (FSDP), "deepspeed", or "plain", from a checkpoint's file names."""
    if f"{SHARDED_DIR}/.metadata" in files:
        return "sharded"
    if any(name.startswith(f"{DEEPSPEED_DIR}/") for name in files):
        return "deepspeed"
    return "plain"


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (sub-folders too), by path relative to it, with its size."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            file = Path(root) / name
            sizes[file.relative_to(folder).as_posix()] = file.stat().st_size
    return sizes


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest loadable checkpoint; damaged newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        if is_loadable(path):
            return path
        log.warning("skipping damaged checkpoint %s (incomplete or corrupt); trying the previous one", path)
    return None


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """trainer.resume -> a checkpoint folder, or None to start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    path = Path(resume).expanduser()
    if STEP_DIR.match(path.name):
        if not is_loadable(path):
            raise UserError(f"trainer.resume={resume}: this checkpoint is incomplete or corrupt; point at an earlier checkpoints/step-N or use trainer.resume=auto.")
        return path
    found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if found is None:
        raise UserError(f"trainer.resume={resume}: no complete checkpoint under it; give a run directory or its checkpoints/step-N.")
    return found


def _rng_state() -> dict:
    """Every generator's state as ints, lists and tensors: a safe load reads it back with
    nothing allow-listed (numpy's own form holds an ndarray)."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"]["key"] = numpy["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):  # the plain form of _rng_state (older files hold numpy's tuple)
        numpy = {**numpy, "state": {**numpy["state"], "key": np.array(numpy["state"]["key"], dtype=np.uint32)}}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(directory: Path, state: TrainState, model, optimizer, scheduler, accelerator, keep: int, protect: int | None) -> Path:
    """Write checkpoints/step-N atomically on every process's behalf; return its path."""
    from safetensors.torch import save_file

    final = directory / f"step-{state.step}"
    tmp = directory / f".tmp-step-{state.step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
        layout = _layout_of(model, accelerator)
        if layout == "sharded":  # every process writes its own shard
            _save_sharded(tmp / SHARDED_DIR, model, optimizer)
        elif layout == "deepspeed":
            accelerator.save_state(str(tmp / DEEPSPEED_DIR))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if layout == "plain":
                unwrapped = accelerator.unwrap_model(model)
                save_file(trainable_state(unwrapped), tmp / "trainable.safetensors")
                torch.save(_plain(optimizer.state_dict()), tmp / "optimizer.pt")
            torch.save(_plain(scheduler.state_dict()), tmp / "scheduler.pt")
            files = _file_sizes(tmp)
            (tmp / "state.json").write_text(json.dumps({**asdict(state), "files": files}, indent=1))
            for sub in (SHARDED_DIR, DEEPSPEED_DIR):
                if (tmp / sub).is_dir():
                    _fsync_dir(tmp / sub)
            _fsync_dir(tmp)
            if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(directory)
    except Exception as exc:
        if not _write_failed(exc):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(directory)
        raise TrainingError(
            f"could not write checkpoint {final}: {getattr(exc, 'strerror', None) or _first_line(exc)}; the last complete checkpoint is "
            f"{previous or 'none'}. Free space (or lower trainer.save_total_limit) and resume with trainer.resume=auto."
        ) from exc
    if accelerator.is_main_process:
        _rotate(directory, keep, protect)
    accelerator.wait_for_everyone()
    return final


def _plain(obj):
    """`obj` with every other mapping and sequence type made a dict or list: an optimizer keeps
    its hyper-parameters as it was given them (bitsandbytes keeps a config's list type for
    betas), and a safe load refuses such types on resume."""
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, Mapping):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(value) for value in obj)
    if isinstance(obj, Sequence):
        return [_plain(value) for value in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    for item in [*path.iterdir(), path] if path.is_dir() else [path]:
        try:
            fd = os.open(item, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _rotate(directory: Path, keep: int, protect: int | None) -> None:
    """Keep the newest `keep` checkpoints plus the best one (`protect`); delete the rest."""
    others = [p for p in list_checkpoints(directory) if p.name != f"step-{protect}"]
    for path in others[: max(len(others) - max(keep, 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


def load_trainable(path: Path, model) -> None:
    """Copy a checkpoint's trainable parameters into `model` (same names, same set)."""
    from safetensors.torch import load_file

    saved = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        raise UserError(
            f"trainer.resume: {path} does not match this model's trainable parameters "
            f"(missing {missing}, unexpected {extra}); resume with the same model and peft settings."
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def load(path: Path, model, optimizer, scheduler, accelerator) -> TrainState:
    """Restore a checkpoint written by `save` into freshly built objects. Its .pt files are all
    read (safely) before anything is restored, so a refused one leaves everything as it was."""
    layout = _check_layout(path, model, accelerator)
    optimizer_state = _safe_load(path / "optimizer.pt") if layout == "plain" else None
    scheduler_state = _safe_load(path / "scheduler.pt")
    rng_file = path / f"rng-rank{accelerator.process_index}.pt"
    rng_state = _safe_load(rng_file, allow=_legacy_rng_globals()) if rng_file.exists() else None
    if layout == "sharded":
        _load_sharded(path / SHARDED_DIR, model, optimizer)
    elif layout == "deepspeed":
        accelerator.load_state(str(path / DEEPSPEED_DIR))
    else:
        load_trainable(path, accelerator.unwrap_model(model))
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    if rng_state is not None:
        _set_rng_state(rng_state)
    return read_state(path)


def _safe_load(file: Path, allow: list | None = None):
    """torch.load that builds tensors and plain containers only (and the types in `allow`), so
    a checkpoint from someone else cannot run code; a refusal is one line naming the file."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"trainer.resume: {file} holds objects a safe load refuses ({_refused(exc)}); it was not written "
            "by llmtune or was tampered with — resume from a checkpoint you trust."
        ) from exc


def _refused(exc: Exception) -> str:
    """The gist of torch's long weights-only message: the global it met, or what failed."""
    text = str(exc)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return found.group(1)
    if found := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return found.group(1).strip()
    return _first_line(exc)


def _legacy_rng_globals() -> list:
    """What an rng-rank{R}.pt written before the plain form (see _rng_state) needs: numpy's
    state tuple holds a uint32 ndarray. These types rebuild an array of numbers and nothing
    else (accelerate allow-lists the same for its RNG files)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_state(path: Path) -> TrainState:
    saved = json.loads((path / "state.json").read_text())
    saved.pop("files", None)
    return TrainState(**saved)


def load_weights(path: Path, model, accelerator) -> None:
    """Load only a checkpoint's weights into the (prepared) model, e.g. the best checkpoint for
    final/. Under FSDP every process loads its shard, so every process must call this."""
    layout = _check_layout(path, model, accelerator)
    if layout == "sharded":
        _load_sharded(path / SHARDED_DIR, model, None)
    elif layout == "deepspeed":
        accelerator.load_state(str(path / DEEPSPEED_DIR))  # restores the optimizer too: harmless here
    else:
        load_trainable(path, accelerator.unwrap_model(model))


# --------------------------------------------------------------------------- sharded (FSDP)
def _write_failed(exc: BaseException) -> bool:
    """An OSError, or torch.distributed.checkpoint's CheckpointException: DCP raises a failed
    write of any process on all of them that way. (Not imported unless DCP ran: it is slow.)"""
    if isinstance(exc, OSError):
        return True
    if "torch.distributed.checkpoint" not in sys.modules:
        return False
    from torch.distributed.checkpoint.api import CheckpointException

    return isinstance(exc, CheckpointException)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _layout_of(model, accelerator) -> str:
    """The checkpoint layout this run writes: "sharded", "deepspeed" or "plain"."""
    from llmtune.engine.distributed import is_sharded

    if is_sharded(model):
        return "sharded"
    # DistributedType is a str enum; a plain comparison keeps test doubles without the attribute working.
    if getattr(accelerator, "distributed_type", None) == "DEEPSPEED":
        return "deepspeed"
    return "plain"


def _check_layout(path: Path, model, accelerator) -> str:
    """The checkpoint's layout, which must be the one this run writes."""
    saved = _layout(_read_files(path))
    current = _layout_of(model, accelerator)
    if saved != current:
        how = {"sharded": "distributed=fsdp", "deepspeed": "distributed=deepspeed_*", "plain": "neither FSDP nor DeepSpeed"}
        raise UserError(
            f"trainer.resume: {path} was written with {how[saved]} and this run uses {how[current]}; "
            "resume with the distributed setting the run was started with, or start a new output_dir."
        )
    return saved


def _read_files(path: Path) -> dict[str, int]:
    return json.loads((path / "state.json").read_text()).get("files", {})


def _trainable_names(model) -> set[str]:
    from llmtune.engine.distributed import clean_name

    return {clean_name(n) for n, p in model.named_parameters() if p.requires_grad}


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper (torch's state-dict helpers need it)."""
    return getattr(optimizer, "optimizer", optimizer)


def _save_sharded(folder: Path, model, optimizer) -> None:
    """Each process writes its shard of the trainable weights and of the optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = _trainable_names(model)
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in names}
    dcp.save({"model": weights, "optimizer": get_optimizer_state_dict(model, _inner(optimizer))}, checkpoint_id=str(folder))


def _load_sharded(folder: Path, model, optimizer) -> None:
    """Read each process's shard back (the optimizer too unless None); the trainable
    parameters must be the ones that were saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = _trainable_names(model)
    stored = {k.split(".", 1)[1] for k in FileSystemReader(str(folder)).read_metadata().state_dict_metadata if k.startswith("model.")}
    if stored != names:
        missing, extra = sorted(names - stored)[:3], sorted(stored - names)[:3]
        raise UserError(
            f"trainer.resume: {folder.parent} does not match this model's trainable parameters "
            f"(missing {missing}, unexpected {extra}); resume with the same model and peft settings."
        )
    state = {"model": {k: v for k, v in get_model_state_dict(model).items() if k in names}}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, _inner(optimizer))
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    if optimizer is not None:
        set_optimizer_state_dict(model, _inner(optimizer), state["optimizer"])
