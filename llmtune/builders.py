"""The only place that turns config into objects (hydra.utils.instantiate for `_target_`s)."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from llmtune.errors import UserError

log = logging.getLogger("llmtune")


def _instantiate(node, group: str, **kwargs):
    _require_target_package(node, group)
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # noqa: BLE001 — instantiate wraps errors in several types
        cause = exc.__cause__ or exc
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{group}: cannot build {node.get('_target_')}: {str(cause).strip().splitlines()[0]}; check the {group}.* keys.") from None


# Optional packages a shipped config may name, and the extra that installs each.
EXTRAS = {"bitsandbytes": "bnb"}


def require_tracker_packages(cfg) -> None:
    """Each tracker option (conf/tracker/<name>.yaml) needs the package of that name, from the
    extra of that name; say so in one line (Accelerate would drop a missing one with a debug
    message, and the run would log nowhere)."""
    import importlib.util

    for name in cfg.get("tracker") or {}:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"tracker={name} needs the {name} package, which is not installed; pip install 'llmtune[{name}]' or pick another tracker (tracker=none).")


def _require_target_package(node, group: str) -> None:
    import importlib.util

    for package in _packages_of(node):
        if package in EXTRAS and importlib.util.find_spec(package) is None:
            raise UserError(f"{group}: {node._target_} needs the {package} package, which is not installed; pip install 'llmtune[{EXTRAS[package]}]' or pick another {group}.")


def _names_package(cfg, package: str) -> bool:
    """Whether a config group's `_target_` comes from `package`, or the group lists it in
    `requires` (the packages its object imports, e.g. peft=qlora: bitsandbytes)."""
    return any(isinstance(node, DictConfig) and package in _packages_of(node) for node in cfg.values())


def _packages_of(node) -> list[str]:
    """The packages a config group's object needs: its `_target_`'s, and any in `requires`."""
    return [str(node.get("_target_", "")).split(".")[0], *(node.get("requires") or [])]


@contextlib.contextmanager
def bitsandbytes_hidden(cfg):
    """Build the run with bitsandbytes hidden (`import bitsandbytes` fails), unless the config
    names it (optimizer=adamw8bit).

    peft imports bitsandbytes whenever it is installed: at import time (peft/helpers.py; and
    transformers imports peft, from transformers.optimization) and again when LoRA wraps a layer
    (its 8-bit dispatch). That cost every run 2-3 s, and on CPUs with AVX512-BF16 bitsandbytes
    logs "Failed to load CPU gemm_4bit_forward from kernels-community" each time. peft needs it
    only for quantized layers, which llmtune never builds.
    """
    hide = "bitsandbytes" not in sys.modules and not _names_package(cfg, "bitsandbytes")
    if hide:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide and sys.modules.get("bitsandbytes", 0) is None:
            del sys.modules["bitsandbytes"]
            _forget_bitsandbytes_checks()


def _forget_bitsandbytes_checks() -> None:
    """Availability checks cached while bitsandbytes was hidden would say 'not installed' for
    the rest of the process (e.g. the next run of an in-process test session)."""
    cached = {"peft.import_utils": ("is_bnb_available", "is_bnb_4bit_available"), "transformers.utils.import_utils": ("is_bitsandbytes_available",)}
    for module, names in cached.items():
        for name in names:
            check = getattr(sys.modules.get(module), name, None)
            if hasattr(check, "cache_clear"):
                check.cache_clear()


def build_accelerator(cfg, run_dir: Path | None = None):
    import torch
    from accelerate import Accelerator

    from llmtune.engine import distributed

    t = cfg.trainer
    # Accelerator(cpu=True) also makes `torchrun`/`accelerate launch` on a GPU-less machine
    # run multi-process on gloo.
    cpu = t.cpu or not torch.cuda.is_available()
    plugins = distributed.accelerator_kwargs(cfg, cpu)  # the `distributed` group: DDP knobs, FSDP, DeepSpeed
    # The `tracker` group's options are named as Accelerate names its trackers (conf/tracker/);
    # trackers that write files (TensorBoard) need a directory: the run's. Only a training run
    # (one with a directory) tracks; `inspect` and the benchmarks build an Accelerator without.
    trackers = list(cfg.get("tracker") or {}) if run_dir is not None else []
    accelerator = Accelerator(cpu=cpu, mixed_precision=t.precision, log_with=trackers or None,
                              project_dir=str(run_dir) if run_dir is not None else None, **plugins)
    distributed.finish_setup(accelerator, plugins, t.precision)
    return accelerator


def set_matmul_precision(tf32: bool) -> None:
    """TF32 for float32 matmuls on CUDA (Ampere or newer); CPU matmuls are unaffected."""
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in backward instead of storing them. Non-reentrant
    checkpointing also works when only adapters (LoRA) need gradients."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"trainer.gradient_checkpointing=true: {type(model).__name__} does not support it; set trainer.gradient_checkpointing=false.")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a KV cache is useless in training and clashes with recomputation


def build_task(cfg):
    return _instantiate(cfg.task, "task")


def build_peft(cfg):
    """The PEFT method of the `peft` group (not yet applied to a model)."""
    from llmtune.peft.base import PeftMethod

    method = _instantiate(cfg.peft, "peft")
    # The base class declares every hook with its default, so the builders call them without probing.
    if not isinstance(method, PeftMethod):
        raise UserError(f"peft: {cfg.peft._target_} is not a llmtune.peft.base.PeftMethod; derive it from that class (override only what differs).")
    return method


def total_steps(tcfg, steps_per_epoch: int) -> int:
    """max_steps when set (it overrides max_epochs, as in HF Trainer), else whole epochs."""
    return tcfg.max_steps or tcfg.max_epochs * steps_per_epoch


@dataclass
class DataParts:
    """A run's task, data and tokenizer (build_data)."""

    task: object
    raw: object           # DatasetDict of raw rows (train, validation, test)
    fingerprint: str      # what the raw data is, for the tokenization cache
    tokenizer: object
    data: object          # the tokenized DatasetDict


def build_data(cfg, accelerator, extension=None) -> DataParts:
    """Task, raw data, tokenizer and tokenized data. The task checks its data (labels, tags,
    chats) and the model's config is checked against it before a tokenizer is trained or
    loaded and before any weights load. `extension`: llmtune.extension.RunExtension."""
    from llmtune.data.load import load_raw, tokenize
    from llmtune.models import check_model
    from llmtune.tokenization import load_tokenizer

    task = build_task(cfg)
    raw, fingerprint = load_raw(cfg.data, task, cfg.seed)
    task.setup(raw)
    if extension is not None:
        extension.on_data(task, raw)
    check_model(cfg.model, task, task.model_kwargs())
    tokenizer = load_tokenizer(cfg.model, task, task.texts(raw["train"]))
    data = tokenize(raw, task, tokenizer, cfg.data, fingerprint, accelerator)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.items())
    log.info("data: %s (%s)", sizes, raw["train"].info.description)
    return DataParts(task, raw, fingerprint, tokenizer, data)


def build_model(cfg, task, tokenizer):
    """The model for the task, with its PEFT method applied: (model, method)."""
    from accelerate.utils import set_seed

    from llmtune.models import load_model
    from llmtune.peft.heads import count_parameters

    t = cfg.trainer
    set_seed(cfg.seed)  # the same initial weights whatever the data loading consumed
    model = load_model(cfg.model, task, tokenizer, task.model_kwargs())
    if t.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    method = build_peft(cfg)
    model = method.apply(model, task)
    if t.compile:
        # In place (nn.Module.compile): parameter names and saved files stay as without it.
        model.compile()
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s total (%.2f%%, peft=%s)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1), method.method)
    return model, method


def build_optimization(cfg, model, method, train_data, num_processes: int):
    """Batch plan, optimizer and scheduler: (plan, optimizer, scheduler, total steps)."""
    from llmtune.engine.batching import make_plan

    t = cfg.trainer
    lengths = [len(ids) for ids in train_data["input_ids"]]
    plan = make_plan(lengths, t, num_processes, cfg.seed)
    plan.check()
    steps = total_steps(t, plan.steps_per_epoch)
    lr = cfg.optimizer.lr if cfg.optimizer.lr is not None else method.default_lr
    # The PEFT method shapes the parameter groups (default: AdamW's decay split; LoRA+: B matrices at a higher lr).
    groups = method.param_groups(model, lr, cfg.optimizer.get("weight_decay", 0.0))
    optimizer = _instantiate(cfg.optimizer, "optimizer", lr=lr)(groups)
    scheduler = _instantiate(cfg.scheduler, "scheduler")(optimizer, num_training_steps=steps)
    log.info("training: %d steps of %s, %.1f epochs, lr %g", steps, plan.describe(), steps / plan.steps_per_epoch, lr)
    return plan, optimizer, scheduler, steps


def build_callbacks(cfg, run_dir: Path, is_main: bool) -> list:
    """The `callbacks` group (conf/callbacks/): each entry is built with the run directory and
    whether this process is the main one; a null entry is switched off. Early stopping belongs
    to the trainer settings (trainer.early_stopping_patience) and always comes last."""
    from llmtune.engine.callbacks import Callback, EarlyStopping

    built = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        callback = _instantiate(node, f"callbacks.{name}", run_dir=run_dir, is_main=is_main)
        # The base class declares every hook with a no-op default, so the loop calls them all
        # without probing; a class that does not derive from it would miss the newer ones.
        if not isinstance(callback, Callback):
            raise UserError(f"callbacks.{name}: {node._target_} is not a llmtune.engine.callbacks.Callback; derive it from that class (override only the hooks you need).")
        built.append(callback)
    return [*built, EarlyStopping(cfg.trainer.early_stopping_patience)]


def build_trainer(cfg, accelerator, run_dir: Path, extension=None):
    """Every part of one training run, composed into a Trainer: (trainer, peft method).
    `extension` (llmtune.extension.RunExtension) adjusts the run at its three hooks."""
    with bitsandbytes_hidden(cfg):
        return _build_trainer(cfg, accelerator, run_dir, extension)


def _build_trainer(cfg, accelerator, run_dir: Path, extension=None):
    from accelerate.utils import set_seed

    from llmtune.engine import checkpoint
    from llmtune.engine.loop import Trainer
    from llmtune.extension import RunExtension

    extension = extension or RunExtension()

    t = cfg.trainer
    set_seed(cfg.seed)
    set_matmul_precision(t.tf32)
    parts = build_data(cfg, accelerator, extension)
    resume_from = checkpoint.resolve_resume(t.resume, run_dir)
    model, method = build_model(cfg, parts.task, parts.tokenizer)
    model = extension.on_model(model, parts.task)
    plan, optimizer, scheduler, steps = build_optimization(cfg, model, method, parts.data["train"], accelerator.num_processes)
    trainer = Trainer(
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, task=parts.task, tokenizer=parts.tokenizer,
        datasets=parts.data, raw=parts.raw, plan=plan, total_steps=steps, run_dir=run_dir, tcfg=t, seed=cfg.seed,
        callbacks=build_callbacks(cfg, run_dir, accelerator.is_main_process), resume_from=resume_from,
        fingerprint={**parts.task.fingerprint(), "peft": method.method, "step_size": plan.fingerprint},
    )
    extension.on_trainer(trainer)
    return trainer, method
