"""`llmtune bench`: the same training run three ways, side by side, in one process.

For each case the SAME model (one set of initial weights), the SAME tokenized training data,
the SAME batch size (samples per optimizer step), precision and number of optimizer steps go
through:

  llmtune             llmtune's engine, built the real way: Hydra compose -> build_accelerator
                      -> build_trainer -> fit (evaluation and checkpoints off, a log line per step)
  hf                  transformers.Trainer with its defaults for the setting (random sampler, the
                      standard data collator, its default optimizer), logging every step like llmtune
  hf_group_by_length  the same with train_sampling_strategy="group_by_length"
  raw                 a minimal hand-written PyTorch loop: AdamW (no schedule), dynamic padding,
                      random order, gradient clipping

What is measured (all of it reported, nothing asserted):

  tokens_per_s     non-pad tokens trained (attention-mask ones of the batches that went into
                   optimizer steps) per second, over the steps after warm-up
  step_ms_median   median time between consecutive optimizer-step ends after warm-up; this
                   includes loading and collating the batch, forward, backward, clipping, the
                   optimizer and the framework's per-step work (logging, callbacks)
  wall_s           the whole training call: for llmtune fit(), for HF Trainer(...) + train(),
                   for the raw loop from moving the model to the device to the last step; the
                   shared preparation (tokenizer, tokenization, model build) is `prep_s` per case
  padding_fraction pad tokens / all tokens in the trained batches
  memory           CUDA: torch.cuda.max_memory_allocated during the run (everything the run holds
                   on the GPU: weights, gradients, optimizer state, activations). CPU: the peak
                   resident-set growth of this process during the run, sampled every 5 ms from
                   /proc/self/statm, over the resident size at its start (the model weights are
                   already resident then): gradients, optimizer state, activations, buffers.
                   Freed heap is handed back (malloc_trim) before each run so earlier runs do not
                   hide growth, but it is an approximation: the allocator may keep some memory.
  mfu              (CUDA only) model-FLOP utilisation: (2N + 2N + 2N_trainable) × tokens/s ÷ peak,
                   i.e. 6N for full training; attention FLOPs are not counted (understates it).

The step clock synchronises CUDA at every step end (the same for all runners) so a step's
time is the GPU's, not the time to enqueue it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.tasks.clm import CLMTask

RUNNERS = ("llmtune", "hf", "hf_group_by_length", "raw")
CPU_CASES = ("cls", "ner", "mlm", "clm")
DEFAULT_PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16
DEFAULT_OUT = "benchmarks/results/cpu.json"
log = logging.getLogger("llmtune.bench")


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One benchmark case: a composed llmtune config plus the training rows behind it."""

    name: str
    command: str                       # "finetune" or "pretrain" (the primary config)
    overrides: list[str]               # Hydra overrides: task, model, peft, task.max_length, ...
    rows: list[dict]                   # training examples, written to a jsonl file (data.train_file)
    batch_size: int = 16
    steps: int = 30
    warmup: int = 5                    # step intervals left out of the medians and tokens/s
    precision: str = "no"
    runners: tuple[str, ...] = RUNNERS
    description: str = ""


def _lognormal_lengths(rng: random.Random, n: int, median: float, sigma: float, cap: int) -> list[int]:
    return [max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def skewed_classification_rows(n: int = 2000, seed: int = 0, median_words: float = 21, sigma: float = 1.0, max_words: int = 600) -> list[dict]:
    """Classification examples with a realistic, right-skewed length distribution: each joins
    texts of one label from llmtune's built-in data until a log-normal number of words is
    reached (median ~25 tokens, a long tail truncated at task.max_length)."""
    from llmtune.data.builtin import builtin_splits

    rng = random.Random(seed)
    base = builtin_splits("classification")["train"]
    by_label: dict[str, list[list[str]]] = {}
    for row in base:
        by_label.setdefault(row["label"], []).append(row["text"].split())
    labels = sorted(by_label)
    rows = []
    for target in _lognormal_lengths(rng, n, median_words, sigma, max_words):
        label = rng.choice(labels)
        words: list[str] = []
        while len(words) < target:
            words += rng.choice(by_label[label])
        rows.append({"text": " ".join(words[:target]), "label": label})
    return rows


def skewed_ner_rows(n: int = 2000, seed: int = 0, median_words: float = 21, sigma: float = 1.0, max_words: int = 600) -> list[dict]:
    """NER examples built like skewed_classification_rows: built-in tagged sentences joined
    (tokens and tags together) up to a log-normal number of words."""
    from llmtune.data.builtin import builtin_splits

    rng = random.Random(seed)
    base = builtin_splits("ner")["train"]
    rows = []
    for target in _lognormal_lengths(rng, n, median_words, sigma, max_words):
        tokens: list[str] = []
        tags: list[str] = []
        while len(tokens) < target:
            row = rng.choice(base)
            tokens += row["tokens"]
            tags += row["tags"]
        rows.append({"tokens": tokens[:target], "tags": tags[:target]})
    return rows


def text_rows() -> list[dict]:
    """The built-in pretraining text (paragraphs of Python's help topics), training split."""
    from llmtune.data.builtin import builtin_splits

    return [{"text": row["text"]} for row in builtin_splits("text")["train"]]


MODELS = {
    # size -> (encoder config, decoder config)
    "small": ("small_mlm", "small_clm"),
    "tiny": ("tiny_bert", "tiny_llama"),
}


def cpu_cases(names: list[str], *, size: str, steps: int, warmup: int, batch_size: int, examples: int, precision: str) -> list[Case]:
    encoder, decoder = MODELS[size]
    common = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "precision": precision}
    builders: dict[str, Callable[[], Case]] = {
        "cls": lambda: Case(
            "cls", "finetune", ["task=classification", f"model={encoder}", "task.max_length=256"],
            skewed_classification_rows(examples), description=f"classification, {encoder}, skewed lengths (max 256)", **common,
        ),
        "ner": lambda: Case(
            "ner", "finetune", ["task=ner", f"model={encoder}", "task.max_length=256"],
            skewed_ner_rows(examples), description=f"NER, {encoder}, skewed lengths (max 256)", **common,
        ),
        "mlm": lambda: Case(
            "mlm", "pretrain", ["task=mlm", f"model={encoder}"], text_rows(),
            description=f"masked-LM pretraining, {encoder}, 128-token blocks", **common,
        ),
        "clm": lambda: Case(
            "clm", "pretrain", ["task=clm", f"model={decoder}"], text_rows(),
            description=f"causal-LM pretraining, {decoder}, 128-token blocks", **common,
        ),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        from llmtune.errors import UserError, did_you_mean

        raise UserError(f"bench: unknown case '{unknown[0]}'.{did_you_mean(unknown[0], list(builders))} Cases: {', '.join(builders)}.")
    return [builders[n]() for n in names]


@dataclass
class UnpackedCLMTask(CLMTask):
    """Causal LM on whole examples (SFT-style, loss on every token): one row per example,
    truncated to max_length, EOS appended, padded per batch, instead of the clm task's packing
    into full blocks. Used by the GPU benchmark's mixed-length case through
    `task._target_=llmtune.bench.UnpackedCLMTask` (llmtune has no SFT task yet)."""

    def preprocess(self, raw, tokenizer):
        eos = tokenizer.eos_token_id

        def encode(batch):
            ids = tokenizer(batch["text"], add_special_tokens=False, truncation=True, max_length=self.max_length - 1)["input_ids"]
            return {"input_ids": [row + [eos] for row in ids]}

        return raw.map(encode, batched=True, remove_columns=raw["train"].column_names, desc="tokenizing")


# --------------------------------------------------------------------------- measuring
class TokenMeter:
    """Wraps a collate function and queues (non-pad tokens, all tokens) per collated batch.
    The step clock takes the oldest entries at each optimizer step: loaders that collate
    ahead (accelerate prefetches one batch) leave theirs queued for the next step."""

    def __init__(self, pad_id: int | None) -> None:
        self.pad_id = pad_id
        self.queue: deque[tuple[int, int]] = deque()

    def wrap(self, collate: Callable) -> Callable:
        def counted(features):
            batch = collate(features)
            ids = batch["input_ids"]
            mask = batch.get("attention_mask") if hasattr(batch, "get") else None
            if mask is not None:
                nonpad = int(mask.sum())
            elif self.pad_id is not None:
                nonpad = int((ids != self.pad_id).sum())
            else:
                nonpad = ids.numel()
            self.queue.append((nonpad, ids.numel()))
            return batch

        return counted

    def take(self, n: int) -> tuple[int, int]:
        nonpad = padded = 0
        for _ in range(min(n, len(self.queue))):
            a, b = self.queue.popleft()
            nonpad, padded = nonpad + a, padded + b
        return nonpad, padded


class StepClock:
    """Times between optimizer-step ends, with the tokens of each step."""

    def __init__(self, meter: TokenMeter, micro_per_step: int, cuda: bool) -> None:
        self.meter, self.micro, self.cuda = meter, micro_per_step, cuda
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self.losses: list[float] = []
        self.started: float | None = None
        self._last = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def begin(self) -> None:
        self._sync()
        self.started = self._last = time.perf_counter()

    def step(self) -> None:
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        nonpad, padded = self.meter.take(self.micro)
        self.tokens.append(nonpad)
        self.padded.append(padded)


class MemoryProbe:
    """Peak memory of one run; see the module docstring for what each number means."""

    def __init__(self, cuda: bool, interval_s: float = 0.005) -> None:
        self.cuda, self.interval = cuda, interval_s
        self.result: dict = {}

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            if rss is not None and rss > self._peak:
                self._peak = rss
            self._stop.wait(self.interval)

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self._base = self._rss()
        self._peak = self._base or 0
        self._stop = threading.Event()
        self._thread = None
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = self._rss()
            self._peak = max(self._peak, rss or 0)
            self.result["peak_rss_growth_mb"] = round((self._peak - self._base) / 2**20, 1)
        if self.cuda:
            import torch

            self.result["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.result["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc), so the next run's RSS growth is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _free_cuda(cuda: bool) -> None:
    gc.collect()
    _malloc_trim()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _reset_accelerate_state() -> None:
    """HF Trainer and llmtune each make an Accelerator; start every run from a clean state."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except (ImportError, AttributeError):
        pass


# --------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """What every runner of one case shares: data, tokenizer, initial weights, settings."""

    case: Case
    cfg: object
    workdir: Path
    trainer: object | None             # llmtune's Trainer (consumed by the llmtune run)
    accelerator: object | None
    initial: object                    # a CPU copy of the model before any training
    tokenizer: object
    task: object
    train: object                      # tokenized training split (datasets.Dataset), shared
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
        "data.validation_split=0",      # no validation split: nothing is evaluated
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
    return Prepared(
        case=case, cfg=cfg, workdir=workdir, trainer=trainer, accelerator=accelerator, initial=initial,
        tokenizer=trainer.tokenizer, task=trainer.task, train=train, device=torch.device(accelerator.device),
        lr=float(group.get("initial_lr", group["lr"])), weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
        schedule=str(s.name), warmup_steps=int(warmup), max_grad_norm=cfg.trainer.max_grad_norm, seed=int(cfg.seed),
        prep_s=prep_s, params=total, trainable=trainable, lengths=[len(x) for x in train["input_ids"]],
    )


def _autocast(device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def hf_collator(p: Prepared):
    """The standard transformers collator for the task (what an HF user would pick)."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification, DataCollatorWithPadding

    auto = p.task.auto_class
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

    def collator(self, tokenizer, train: bool):
        collate = self._task.collator(tokenizer, train=train)
        return self._meter.wrap(collate) if train else collate


def _sampling_args(grouped: bool) -> dict:
    """transformers 5 names the sampler `train_sampling_strategy`; older releases had group_by_length."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length" if grouped else "random"}
    return {"group_by_length": grouped}


def run_hf(p: Prepared, grouped: bool) -> RunRecord:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
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
        logging_steps=1,                 # llmtune logs every step in this benchmark too
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        bf16=case.precision == "bf16",
        fp16=case.precision == "fp16",
        seed=p.seed,
        disable_tqdm=True,               # no progress bar (llmtune's is off when not on a terminal)
        **_sampling_args(grouped),
    )
    with MemoryProbe(cuda) as probe:
        started = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=hf_dataset(p), data_collator=meter.wrap(hf_collator(p)),
                          processing_class=p.tokenizer, callbacks=[Timing()])
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
        hf_dataset(p), batch_size=case.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(p.seed),
        collate_fn=meter.wrap(hf_collator(p)), pin_memory=cuda,
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


# --------------------------------------------------------------------------- summaries
def summarize(rec: RunRecord, p: Prepared, peak_flops: float) -> dict:
    c = rec.clock
    skip = min(p.case.warmup, max(len(c.times) - 2, 0))
    times, tokens = c.times[skip:], c.tokens[skip:]
    measured = sum(times)
    out = {
        "steps": len(c.times),
        "warmup_steps_skipped": skip,
        "tokens_per_s": round(sum(tokens) / measured, 1) if measured > 0 else None,
        "samples_per_s": round(len(times) * p.case.batch_size / measured, 2) if measured > 0 else None,
        "step_ms_median": round(1e3 * statistics.median(times), 2) if times else None,
        "step_ms_p90": round(1e3 * _quantile(times, 0.9), 2) if times else None,
        "first_step_ms": round(1e3 * c.times[0], 1) if c.times else None,
        "wall_s": round(rec.wall_s, 3),
        "tokens_trained": sum(c.tokens),
        "padding_fraction": round(1 - sum(c.tokens) / sum(c.padded), 4) if sum(c.padded) else None,
        "loss_first": round(c.losses[0], 4) if c.losses else None,
        "loss_last": round(statistics.fmean(c.losses[-5:]), 4) if c.losses else None,
        **rec.memory,
        **rec.extra,
    }
    if p.device.type == "cuda" and out["tokens_per_s"]:
        flops_per_token = 4 * p.params + 2 * p.trainable
        out["model_tflops_per_s"] = round(flops_per_token * out["tokens_per_s"] / 1e12, 2)
        out["mfu"] = round(flops_per_token * out["tokens_per_s"] / peak_flops, 4)
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    return {"median": statistics.median(lengths), "mean": round(statistics.fmean(lengths), 1), "p90": _quantile(lengths, 0.9), "max": max(lengths)}


def ratios(runs: dict) -> dict:
    base = runs.get("llmtune") or {}
    out: dict[str, dict] = {"tokens_per_s": {}, "step_ms_median": {}, "wall_s": {}}
    for name, r in runs.items():
        if name == "llmtune" or "error" in r or "error" in base:
            continue
        for key in out:
            if base.get(key) and r.get(key):
                out[key][f"llmtune/{name}"] = round(base[key] / r[key], 3)
    return out


def run_case(case: Case, workdir: Path, *, device: str = "cpu", peak_flops: float = DEFAULT_PEAK_FLOPS, say=print) -> dict:
    """Prepare one case, run every runner on it, and return its JSON-ready results."""
    say(f"[{case.name}] preparing ({case.description or case.command})")
    p = prepare(case, workdir, device)
    say(f"[{case.name}] {len(p.train)} training examples, {p.params:,} parameters ({p.trainable:,} trainable), prep {p.prep_s:.1f}s")
    runs: dict[str, dict] = {}
    order = [r for r in RUNNERS if r in case.runners]
    for name in order:
        say(f"[{case.name}] {name}: {case.steps} steps of {case.batch_size}")
        try:
            if name == "llmtune":
                rec = run_llmtune(p)
            elif name == "raw":
                rec = run_raw(p)
            else:
                rec = run_hf(p, grouped=name == "hf_group_by_length")
            runs[name] = summarize(rec, p, peak_flops)
        except Exception as exc:  # noqa: BLE001 — a broken runner is reported, the others still run
            if os.environ.get("LLMTUNE_DEBUG"):
                raise
            runs[name] = {"error": f"{type(exc).__name__}: {exc}".strip().splitlines()[0], "traceback": traceback.format_exc(limit=6)}
            say(f"[{case.name}] {name} FAILED: {runs[name]['error']}")
            if p.trainer is not None and name == "llmtune":
                p.trainer = None
            _free_cuda(p.device.type == "cuda")
    result = {
        "description": case.description,
        "command": f"llmtune {case.command} " + " ".join(case.overrides),
        "settings": {
            "batch_size": case.batch_size, "steps": case.steps, "warmup_skipped": case.warmup, "precision": case.precision,
            "device": str(p.device), "lr": p.lr, "weight_decay": p.weight_decay, "schedule": p.schedule,
            "warmup_steps": p.warmup_steps, "max_grad_norm": p.max_grad_norm, "seed": p.seed,
        },
        "data": {"examples": len(p.train), "token_length": _length_stats(p.lengths)},
        "model": {"class": type(p.initial).__name__, "params": p.params, "trainable": p.trainable},
        "prep_s": round(p.prep_s, 2),
        "runs": runs,
        "ratios": ratios(runs),
    }
    del p
    _free_cuda(device == "cuda")
    return result


# --------------------------------------------------------------------------- output
def case_table(name: str, result: dict):
    from rich.table import Table

    runs = result["runs"]
    cuda = result["settings"]["device"].startswith("cuda")
    base = runs.get("llmtune", {})
    table = Table(title=f"{name}: {result['description']}", title_justify="left")
    for col in ("runner", "tok/s", "step ms (med)", "wall s", "peak mem MB", "pad %", "loss first→last", "llmtune ÷ this (tok/s)"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    if cuda:
        table.add_column("MFU", justify="right")
    for runner, r in runs.items():
        if "error" in r:
            table.add_row(runner, f"[red]error: {r['error'][:60]}[/red]", *[""] * (len(table.columns) - 2))
            continue
        mem = r.get("cuda_max_allocated_mb", r.get("peak_rss_growth_mb"))
        ratio = ""
        if runner != "llmtune" and base.get("tokens_per_s") and r.get("tokens_per_s"):
            ratio = f"{base['tokens_per_s'] / r['tokens_per_s']:.2f}×"
        loss = f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if r.get("loss_first") is not None else "-"
        row = [
            runner, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms_median']:.1f}", f"{r['wall_s']:.2f}",
            "-" if mem is None else f"{mem:,.0f}", f"{100 * (r['padding_fraction'] or 0):.1f}", loss, ratio or "-",
        ]
        if cuda:
            row.append(f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-")
        table.add_row(*row)
    lengths = result["data"]["token_length"]
    table.caption = (
        f"{result['data']['examples']} examples, tokens/example median {lengths.get('median')} p90 {lengths.get('p90')} max {lengths.get('max')}; "
        f"batch {result['settings']['batch_size']}, {result['settings']['steps']} steps (first {result['settings']['warmup_skipped']} not timed); "
        f"{result['model']['params']:,} params; prep {result['prep_s']}s"
    )
    return table


def environment(device: str, peak_flops: float) -> dict:
    import accelerate
    import torch
    import transformers

    info = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["peak_flops"] = peak_flops
    return info


def write_results(results: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)


def quiet_libraries() -> None:
    """Benchmark output is the tables: library and engine chatter goes to warnings only."""
    import warnings

    from llmtune.ui.console import setup_logging

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from libraries
    setup_logging(is_main=True)
    logging.getLogger("llmtune").setLevel(logging.WARNING)
    for name in ("transformers", "datasets", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()


def run_all(cases: list[Case], out: Path | None, *, device: str, peak_flops: float, argv: list[str], budget_s: float | None = None) -> dict:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: do not squeeze the table into 80 columns
    say = lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False)  # noqa: E731
    results = {"meta": {"argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **environment(device, peak_flops)}, "cases": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmtune-bench-") as tmp:
        for case in cases:
            if budget_s is not None and time.perf_counter() - started > budget_s:
                results["cases"][case.name] = {"skipped": f"time budget of {budget_s:.0f}s used up"}
                say(f"[{case.name}] skipped: time budget used up")
                continue
            workdir = Path(tmp) / case.name
            workdir.mkdir()
            try:
                result = run_case(case, workdir, device=device, peak_flops=peak_flops, say=say)
            except Exception as exc:  # noqa: BLE001 — preparation failed: report, go on
                if os.environ.get("LLMTUNE_DEBUG"):
                    raise
                result = {"error": f"{type(exc).__name__}: {exc}".strip().splitlines()[0], "traceback": traceback.format_exc(limit=8)}
                say(f"[{case.name}] FAILED: {result['error']}")
            results["cases"][case.name] = result
            if "runs" in result:
                console.print(case_table(case.name, result))
            if out is not None:
                write_results(results, out)  # after every case: a crash keeps what was measured
    results["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    try:
        import resource

        results["meta"]["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        pass
    if out is not None:
        write_results(results, out)
        console.print(f"results: {out}")
    return results


def failures(results: dict) -> list[str]:
    found = []
    for name, case in results["cases"].items():
        if "error" in case:
            found.append(name)
        for runner, r in case.get("runs", {}).items():
            if "error" in r:
                found.append(f"{name}/{runner}")
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmtune bench",
        description="Train the same model on the same data with llmtune, HF Trainer (random and group_by_length) and a plain "
        "PyTorch loop; print a table per case and write the numbers as JSON. Reports, never asserts.",
    )
    parser.add_argument("--cases", default=",".join(CPU_CASES), help=f"comma-separated cases (default: {','.join(CPU_CASES)})")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default: 10; more gives steadier numbers)")
    parser.add_argument("--warmup", type=int, default=3, help="first step intervals left out of medians and tokens/s (default: 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per optimizer step (default: 16)")
    parser.add_argument("--size", choices=sorted(MODELS), default="small", help="model size built from config (default: small)")
    parser.add_argument("--examples", type=int, default=2000, help="examples generated for cls and ner (default: 2000)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated runners (default: {','.join(RUNNERS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no", help="mixed precision (default: no)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS, help="peak FLOP/s for MFU on CUDA (default: 989e12, H100/H200 bf16 dense)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from llmtune.errors import UserError

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if args.steps < 2:
        raise UserError("bench: --steps must be at least 2 (one step interval is timed after the first).")
    runners = tuple(r.strip() for r in args.runners.split(",") if r.strip())
    bad = [r for r in runners if r not in RUNNERS]
    if bad:
        raise UserError(f"bench: unknown runner '{bad[0]}'; runners: {', '.join(RUNNERS)}.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("bench: --device cuda but no CUDA GPU is visible; leave --device at cpu.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quiet_libraries()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    cases = cpu_cases(names, size=args.size, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, examples=args.examples, precision=args.precision)
    for case in cases:
        case.runners = runners
    results = run_all(cases, Path(args.out), device=args.device, peak_flops=args.peak_flops, argv=["llmtune", "bench", *(argv or [])])
    failed = failures(results)
    if failed:
        raise UserError(f"bench: {len(failed)} run(s) failed: {', '.join(failed)}; their errors are in {args.out} (LLMTUNE_DEBUG=1 for tracebacks).")
    return results
