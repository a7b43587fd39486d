"""The runners: llmtune's engine, HF Trainer (two samplers) and a plain PyTorch loop, on one prepared case."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.bench.cases import Case
from llmtune.bench.measure import (
    MemoryProbe,
    StepClock,
    TokenMeter,
    _free_cuda,
    _reset_accelerate_state,
)


# --------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """What every runner of one case shares: data, tokenizer, initial weights, settings."""

    case: Case
    cfg: object
    workdir: Path
    trainer: object | None  # llmtune's Trainer (consumed by the llmtune run)
    accelerator: object | None
    initial: object  # a CPU copy of the model before any training
    tokenizer: object
    task: object
    train: object  # tokenized training split (datasets.Dataset), shared
    device: object
    lr: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    max_grad_norm: float | None
    seed: int
    prep_s: float
    params: int
    trainable: int
    lengths: list[int] = field(default_factory=list)


def compose(command: str, overrides: list[str]):
    """The config llmtune would run for `llmtune COMMAND OVERRIDES` (validated)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmtune import config
    from llmtune.paths import conf_dir

    config.register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose(config_name=command, overrides=overrides)
    config.validate(cfg)
    return cfg


def llmtune_overrides(case: Case, data_file: Path, run_dir: Path, device: str) -> list[str]:
    return [
        *case.overrides,
        f"data.train_file='{data_file}'",
        "data.validation_file=null",
        "data.test_file=null",
        "data.validation_split=null",  # no validation split: nothing is evaluated
        "data.cache=false",
        f"trainer.max_steps={case.steps}",
        "trainer.max_epochs=null",
        f"trainer.batch_size={case.batch_size}",
        "trainer.grad_accum=1",
        "trainer.eval_every=null",
        "trainer.eval_at_start=false",
        "trainer.save_every=null",
        "trainer.log_every=1",
        f"trainer.precision={case.precision}",
        f"trainer.cpu={'true' if device == 'cpu' else 'false'}",
        f"output_dir='{run_dir}'",
    ]


def prepare(case: Case, workdir: Path, device: str) -> Prepared:
    """Build llmtune's trainer through the real path; keep a copy of the initial weights."""
    import torch

    from llmtune.builders import build_accelerator, build_trainer
    from llmtune.peft.heads import count_parameters

    workdir.mkdir(parents=True, exist_ok=True)
    data_file = workdir / f"{case.name}.jsonl"
    with data_file.open("w") as f:
        for row in case.rows:
            f.write(json.dumps(row) + "\n")
    run_dir = workdir / f"{case.name}-llmtune"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose(case.command, llmtune_overrides(case, data_file, run_dir, device))
    _reset_accelerate_state()
    started = time.perf_counter()
    accelerator = build_accelerator(cfg)
    trainer, method = build_trainer(cfg, accelerator, run_dir)
    prep_s = time.perf_counter() - started
    initial = copy.deepcopy(trainer.model)  # built under the config's seed: everyone starts here
    train = trainer.datasets["train"]
    group = trainer.optimizer.param_groups[0]
    s = cfg.scheduler
    warmup = s.warmup_steps if s.get("warmup_steps") is not None else int(round((s.get("warmup_ratio") or 0.0) * trainer.total_steps))
    trainable, total = count_parameters(trainer.model)
    if case.packed_rows:
        train = unpacked_samples(trainer.task, trainer.tokenizer, case.rows)
        trainer.plan = dataclasses.replace(trainer.plan, batch_size=rows_for_tokens(case.batch_size, train["input_ids"], trainer.plan.lengths))
    return Prepared(
        case=case,
        cfg=cfg,
        workdir=workdir,
        trainer=trainer,
        accelerator=accelerator,
        initial=initial,
        tokenizer=trainer.tokenizer,
        task=trainer.task,
        train=train,
        device=torch.device(accelerator.device),
        lr=float(group.get("initial_lr", group["lr"])),
        weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
        schedule=str(s.name),
        warmup_steps=int(warmup),
        max_grad_norm=cfg.trainer.max_grad_norm,
        seed=int(cfg.seed),
        prep_s=prep_s,
        params=total,
        trainable=trainable,
        lengths=[len(x) for x in train["input_ids"]],
    )


def rows_for_tokens(samples_per_step: int, samples: list[list[int]], row_lengths: list[int]) -> int:
    """Packed rows per step holding about the real tokens of `samples_per_step` samples."""
    mean_sample = sum(map(len, samples)) / max(len(samples), 1)
    mean_row = sum(row_lengths) / max(len(row_lengths), 1)
    return max(1, round(samples_per_step * mean_sample / mean_row))


def unpacked_samples(task, tokenizer, rows: list[dict]):
    """The baselines' data for a packed SFT case: the same samples one per row, with labels
    unshifted as transformers models expect them (they shift inside their loss): the token
    itself where it is learned, -100 elsewhere."""
    from datasets import Dataset, DatasetDict

    plain = dataclasses.replace(task, packing=False)
    data = plain.preprocess(DatasetDict({"train": Dataset.from_list(rows)}), tokenizer)["train"]
    return data.map(lambda row: {"labels": [-100] + row["labels"][:-1]}, desc="unshifting labels")


def _autocast(device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def hf_collator(p: Prepared):
    """The standard transformers collator for the task (what an HF user would pick)."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    auto = p.task.auto_class
    if p.task.name == "sft":  # pads input_ids and the -100 labels of prompt tokens per batch
        return DataCollatorForSeq2Seq(p.tokenizer, label_pad_token_id=-100)
    if auto == "AutoModelForSequenceClassification":
        return DataCollatorWithPadding(p.tokenizer)
    if auto == "AutoModelForTokenClassification":
        return DataCollatorForTokenClassification(p.tokenizer)
    if auto == "AutoModelForMaskedLM":
        return DataCollatorForLanguageModeling(p.tokenizer, mlm=True, mlm_probability=getattr(p.task, "mlm_probability", 0.15))
    if auto == "AutoModelForCausalLM":
        return DataCollatorForLanguageModeling(p.tokenizer, mlm=False)
    raise ValueError(f"bench: no HF collator for {auto}")


def hf_dataset(p: Prepared):
    """The shared tokenized split with only the columns the HF collators and models take."""
    keep = [c for c in ("input_ids", "token_type_ids", "attention_mask", "labels") if c in p.train.column_names]
    return p.train.select_columns(keep)


# --------------------------------------------------------------------------- runners
@dataclass
class RunRecord:
    clock: StepClock
    wall_s: float
    memory: dict
    extra: dict = field(default_factory=dict)


def run_llmtune(p: Prepared) -> RunRecord:
    from llmtune.engine.callbacks import Callback
    from llmtune.engine.loop import fit

    trainer, p.trainer = p.trainer, None
    cuda = p.device.type == "cuda"
    meter = TokenMeter(p.tokenizer.pad_token_id)
    clock = StepClock(meter, trainer.tcfg.grad_accum, cuda)

    class Timing(Callback):
        def on_train_start(self, state, total_steps):
            clock.begin()

        def on_step(self, state):
            clock.step()

        def on_log(self, state, record):
            clock.losses.append(float(record["loss"]))

    trainer.task = _CountingTask(trainer.task, meter)
    trainer.callbacks.append(Timing())
    with MemoryProbe(cuda) as probe:
        started = time.perf_counter()
        result = fit(trainer)
        wall = time.perf_counter() - started
    extra = {"engine_tokens_seen": int(result.state.tokens_seen), "engine_runtime_s": round(result.runtime_s, 3)}
    if p.case.packed_rows:  # a step's sample count varies with the packing; tokens/s is the measure
        extra.update(samples_per_s=None, rows_per_step=trainer.plan.batch_size)
    acc = p.accelerator
    trainer.model = trainer.optimizer = None
    del trainer, result
    if acc is not None:
        acc.free_memory()
    p.accelerator = None
    _free_cuda(cuda)
    return RunRecord(clock, wall, probe.result, extra)


class _CountingTask:
    """The task, with its training collator wrapped by a TokenMeter; everything else passes through."""

    def __init__(self, task, meter: TokenMeter) -> None:
        self._task, self._meter = task, meter

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_collator(self, tokenizer):
        # What the engine collates training batches with (train mixers included).
        return self._meter.wrap(self._task.train_collator(tokenizer))


def _sampling_args(grouped: bool) -> dict:
    """transformers 5 names the sampler `train_sampling_strategy`; older releases had group_by_length."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if grouped else "random"}
    return {"group_by_length": grouped}


def run_hf(p: Prepared, grouped: bool) -> RunRecord:
    from transformers import (
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.trainer_callback import ProgressCallback

    case = p.case
    cuda = p.device.type == "cuda"
    meter = TokenMeter(p.tokenizer.pad_token_id)
    clock = StepClock(meter, 1, cuda)

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    model = copy.deepcopy(p.initial)
    _reset_accelerate_state()
    args = TrainingArguments(
        output_dir=str(p.workdir / f"{case.name}-hf"),
        per_device_train_batch_size=case.batch_size,
        gradient_accumulation_steps=1,
        max_steps=case.steps,
        learning_rate=p.lr,
        weight_decay=p.weight_decay,
        lr_scheduler_type=p.schedule,
        warmup_steps=p.warmup_steps,
        max_grad_norm=p.max_grad_norm if p.max_grad_norm is not None else 0.0,
        logging_steps=1,  # llmtune logs every step in this benchmark too
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        bf16=case.precision == "bf16",
        fp16=case.precision == "fp16",
        seed=p.seed,
        disable_tqdm=True,  # no progress bar (llmtune's is off when not on a terminal)
        **_sampling_args(grouped),
    )
    with MemoryProbe(cuda) as probe:
        started = time.perf_counter()
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=hf_dataset(p),
            data_collator=meter.wrap(hf_collator(p)),
            processing_class=p.tokenizer,
            callbacks=[Timing()],
        )
        trainer.remove_callback(PrinterCallback)  # prints every log dict to stdout
        trainer.remove_callback(ProgressCallback)
        trainer.train()
        wall = time.perf_counter() - started
    optim = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__
    extra = {"optimizer": f"{getattr(args.optim, 'value', args.optim)} ({optim})"}
    trainer.accelerator.free_memory()
    del trainer, model
    _free_cuda(cuda)
    return RunRecord(clock, wall, probe.result, extra)


def run_raw(p: Prepared) -> RunRecord:
    import torch
    from torch.utils.data import DataLoader

    case = p.case
    cuda = p.device.type == "cuda"
    meter = TokenMeter(p.tokenizer.pad_token_id)
    clock = StepClock(meter, 1, cuda)
    model = copy.deepcopy(p.initial)
    torch.manual_seed(p.seed)
    loader = DataLoader(
        hf_dataset(p),
        batch_size=case.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(p.seed),
        collate_fn=meter.wrap(hf_collator(p)),
        pin_memory=cuda,
    )
    losses = []
    with MemoryProbe(cuda) as probe:
        started = time.perf_counter()
        model.to(p.device)
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        batches = iter(loader)
        clock.begin()
        for _ in range(case.steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            batch = {k: v.to(p.device, non_blocking=True) for k, v in batch.items()}
            with _autocast(p.device, case.precision):
                loss = model(**batch).loss
            loss.backward()
            if p.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            clock.step()
        clock.losses = [float(x) for x in losses]
        wall = time.perf_counter() - started
    del model, optimizer, params, losses, batch, loss
    _free_cuda(cuda)
    return RunRecord(clock, wall, probe.result, {"optimizer": "torch.optim.AdamW (defaults), no schedule"})
