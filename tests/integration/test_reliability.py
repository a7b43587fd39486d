"""Reliability: resume equality, atomic and damaged checkpoints, disk full, changed settings on
resume, LoRA resume, non-finite losses, unlabelled examples, a tokenizer without a pad token,
out of memory, and refusing to overwrite a run — all in process on tiny models.

The runs use the saved tokenizer (tests/assets/tiny_wordpiece) so that two runs tokenize alike,
and keep dropout ON (the tiny models' default) unless a test says otherwise: a resume must then
also restore the torch RNG exactly, or the dropout masks (and so the losses) drift.

The training set (tests/assets/ner_train.conll) has 12 sentences: at trainer.batch_size=3 an
epoch is 4 steps, so a checkpoint at step 4 sits on an epoch boundary; at batch_size=4 an epoch
is 3 steps and step 4 is one step into the second epoch (mid-epoch).

Subprocess faults (SIGKILL mid-save, SIGTERM/SIGINT, a failing rank) are in
test_faults_subprocess.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ASSETS, FIXED_TOKENIZER, cls_args, lm_args, nan_loss_at_call, ner_args, read_log, run_cli

BATCH = {"boundary": 3, "mid": 4}  # step 4 is / is not the end of an epoch on the 12 sentences


# ------------------------------------------------------------------ helpers
def _args(out: Path, steps: int = 8, batch: int = 3, *extra: str) -> list[str]:
    """A tiny NER run: log every step, checkpoint every 2 steps (all kept), evaluate at the end."""
    base = [a for a in ner_args(out, steps=steps) if not a.startswith(("trainer.batch_size=", "trainer.eval_every="))]
    return [
        *base, f"trainer.batch_size={batch}", "trainer.eval_every=null", "trainer.save_every=2",
        "trainer.save_total_limit=10", f"model.tokenizer={FIXED_TOKENIZER}", *extra,
    ]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


def _ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def _names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _assert_tensors_equal(a, b, where: str = "") -> None:
    """Exact (torch.equal) equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_tensors_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _peek_rngs() -> tuple:
    """The next python, numpy and torch random numbers, without consuming them."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    values = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    return values


@contextlib.contextmanager
def _instrumented():
    """Record what a run reads and the RNG streams around step 4's save and around a load.

    seen: (epoch, example indices) of every micro-batch collated in this process (workers=0).
    rng:  {"saved": next numbers right after step-4 was saved, "loaded": right after a load}.
    """
    from llmtune.engine import checkpoint, loop

    seen: list[tuple[int, tuple[int, ...]]] = []
    rng: dict[str, tuple] = {}
    real_getitem, real_save, real_load = loop._StepBatches.__getitem__, checkpoint.save, checkpoint.load

    def getitem(self, k):
        seen.append((self.epoch, tuple(self.micro[k])))
        return real_getitem(self, k)

    def save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if path.name == "step-4":
            rng["saved"] = _peek_rngs()
        return path

    def load(*args, **kwargs):
        state = real_load(*args, **kwargs)
        rng["loaded"] = _peek_rngs()
        return state

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop._StepBatches, "__getitem__", getitem)
        mp.setattr(checkpoint, "save", save)
        mp.setattr(checkpoint, "load", load)
        yield SimpleNamespace(seen=seen, rng=rng)


@contextlib.contextmanager
def _captured_fit():
    """Keep the Trainer of each fit() call (its model is the trained, unwrapped model)."""
    from llmtune.engine import loop

    trainers = []
    real_fit = loop.fit

    def fit(trainer):
        trainers.append(trainer)
        return real_fit(trainer)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "fit", fit)
        yield trainers


def _snapshot(directory: Path) -> dict[str, tuple]:
    """Every file and folder under `directory` (hidden ones too): mtime, size, content hash."""
    out = {}
    for path in sorted([directory, *directory.rglob("*")]):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(directory))] = (st.st_mtime_ns, st.st_size if path.is_file() else None, digest)
    return out


def _copy_run(src: Path, dst: Path, upto_step: int | None = None) -> Path:
    """A copy of a finished run, optionally cut back to how it looked after `upto_step`
    (later checkpoints, final/, metrics.json and later log lines removed): a run killed there."""
    shutil.copytree(src, dst)
    if upto_step is not None:
        for ckpt in (dst / "checkpoints").iterdir():
            if int(ckpt.name.split("-")[1]) > upto_step:
                shutil.rmtree(ckpt)
        shutil.rmtree(dst / "final")
        (dst / "metrics.json").unlink()
        kept = [line for line in (dst / "train_log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= upto_step]
        (dst / "train_log.jsonl").write_text("\n".join(kept) + "\n")
    return dst


# ------------------------------------------------------------------ shared runs (made once)
_RUNS: dict = {}


def _straight(kind: str, workers: int, factory) -> SimpleNamespace:
    """An uninterrupted 8-step run (dropout on), checkpointed every 2 steps, all kept."""
    key = ("straight", kind, workers)
    if key not in _RUNS:
        out = factory.mktemp(f"straight-{kind}-w{workers}") / "run"
        with _instrumented() as rec:
            result = run_cli(*_args(out, 8, BATCH[kind], f"trainer.num_workers={workers}"))
        assert result.code == 0, result.err[-3000:]
        _RUNS[key] = SimpleNamespace(dir=out, seen=list(rec.seen), rng=dict(rec.rng), result=result)
    return _RUNS[key]


def _resumed(kind: str, workers: int, factory) -> SimpleNamespace:
    """The same run started again in a NEW output_dir from the straight run's step-4."""
    key = ("resumed", kind, workers)
    if key not in _RUNS:
        straight = _straight(kind, workers, factory)
        out = factory.mktemp(f"resumed-{kind}-w{workers}") / "run"
        with _instrumented() as rec:
            result = run_cli(*_args(out, 8, BATCH[kind], f"trainer.num_workers={workers}", f"trainer.resume={_ckpt(straight.dir, 4)}"))
        assert result.code == 0, result.err[-3000:]
        _RUNS[key] = SimpleNamespace(dir=out, seen=list(rec.seen), rng=dict(rec.rng), result=result, straight=straight)
    return _RUNS[key]


@pytest.fixture(scope="module")
def boundary(tmp_path_factory) -> SimpleNamespace:
    """The straight run whose step-4 is an epoch boundary (workers 0); many tests start from it."""
    return _straight("boundary", 0, tmp_path_factory)


CASES = [
    pytest.param("boundary", 0, id="boundary-w0"),
    pytest.param("mid", 0, id="mid-w0"),
    pytest.param("boundary", 2, id="boundary-w2", marks=pytest.mark.slow),
    pytest.param("mid", 2, id="mid-w2", marks=pytest.mark.slow),
]


# ------------------------------------------------------------------ 1. resume equality
@pytest.mark.parametrize("kind,workers", CASES)
def test_resume_matches_the_uninterrupted_run_exactly(kind, workers, tmp_path_factory):
    resumed = _resumed(kind, workers, tmp_path_factory)
    straight = resumed.straight
    assert f"resumed from {_ckpt(straight.dir, 4)}" in resumed.result.err

    expected, got = _losses(straight.dir), _losses(resumed.dir)
    assert sorted(expected) == list(range(1, 9)) and sorted(got) == [5, 6, 7, 8]
    for step in got:  # exact: dropout is on, so this also needs the torch RNG restored
        assert got[step] == expected[step], (step, got[step], expected[step])

    _assert_tensors_equal(load_file(_ckpt(straight.dir, 8) / "trainable.safetensors"),
                          load_file(_ckpt(resumed.dir, 8) / "trainable.safetensors"), "trainable")
    optimizer_a = torch.load(_ckpt(straight.dir, 8) / "optimizer.pt", weights_only=False)
    optimizer_b = torch.load(_ckpt(resumed.dir, 8) / "optimizer.pt", weights_only=False)
    assert optimizer_a["state"], "the optimizer state is empty: nothing to compare"
    _assert_tensors_equal(optimizer_a, optimizer_b, "optimizer")
    for name in ("scheduler.pt",):
        assert torch.load(_ckpt(straight.dir, 8) / name, weights_only=False) == torch.load(_ckpt(resumed.dir, 8) / name, weights_only=False)


@pytest.mark.parametrize("kind", ["boundary", "mid"])
def test_resume_sees_the_same_samples(kind, tmp_path_factory):
    """Steps 5-8 of the resumed run collate exactly the micro-batches the straight run did."""
    resumed = _resumed(kind, 0, tmp_path_factory)
    straight = resumed.straight
    assert len(straight.seen) == 8, "one micro-batch per step at grad_accum 1"
    assert resumed.seen == straight.seen[4:8]
    # and these are real, distinct shuffled batches (the test would notice a wrong offset)
    assert len({batch for _, batch in straight.seen[:4]}) == 4
    assert resumed.seen != straight.seen[:4]


@pytest.mark.parametrize("kind", ["boundary", "mid"])
def test_resume_restores_python_numpy_and_torch_rng(kind, tmp_path_factory):
    """Right after checkpoint.load the next python/numpy/torch numbers are those the straight
    run would have drawn right after saving step-4 (the state saved in rng-rank0.pt)."""
    resumed = _resumed(kind, 0, tmp_path_factory)
    assert resumed.straight.rng["saved"] == resumed.rng["loaded"]
    assert (_ckpt(resumed.straight.dir, 4) / "rng-rank0.pt").is_file()


def test_rng_state_roundtrip_unit(tmp_path):
    """checkpoint.save / load restore all three generators (unit level, no model run)."""
    from llmtune.engine import checkpoint
    from llmtune.engine.checkpoint import TrainState

    acc = SimpleNamespace(is_main_process=True, process_index=0, wait_for_everyone=lambda: None, unwrap_model=lambda m: m)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = checkpoint.save(tmp_path, TrainState(step=1), model, opt, sched, acc, keep=5, protect=None)
    expected = _peek_rngs()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)  # move every stream on
    assert _peek_rngs() != expected
    checkpoint.load(path, model, opt, sched, acc)
    assert _peek_rngs() == expected


# ------------------------------------------------------------------ 2a. leftover temporary checkpoint
def test_leftover_tmp_checkpoint_is_ignored_by_resume_auto(boundary, tmp_path):
    out = _copy_run(boundary.dir, tmp_path / "killed", upto_step=4)
    # What a kill during step 6's save leaves behind: a temporary folder with partial files.
    tmp = out / "checkpoints" / ".tmp-step-6"
    tmp.mkdir()
    weights = (_ckpt(boundary.dir, 6) / "trainable.safetensors").read_bytes()
    (tmp / "trainable.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copy(_ckpt(boundary.dir, 6) / "rng-rank0.pt", tmp / "rng-rank0.pt")

    result = run_cli(*_args(out, 8, 3, "trainer.resume=auto"))
    assert result.code == 0, result.err[-3000:]
    assert f"resumed from {_ckpt(out, 4)} at step 4" in result.err
    assert _losses(out) == _losses(boundary.dir)  # steps 1-4 kept, 5-8 equal the straight run
    assert _names(out) == ["step-2", "step-4", "step-6", "step-8"]  # the temporary folder is gone
    _assert_tensors_equal(load_file(_ckpt(boundary.dir, 8) / "trainable.safetensors"), load_file(_ckpt(out, 8) / "trainable.safetensors"))


# ------------------------------------------------------------------ 3. damaged newest checkpoint
def _truncate_weights(ckpt: Path) -> None:
    path = ckpt / "trainable.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_state(ckpt: Path) -> None:
    (ckpt / "state.json").write_text('{"step": 8, "epoch": ')


@pytest.mark.parametrize("damage", [
    pytest.param(_truncate_weights, id="truncated-weights"),
    pytest.param(_corrupt_state, id="corrupt-state-json", marks=pytest.mark.slow),
])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(damage, boundary, tmp_path):
    from llmtune.engine import checkpoint

    out = _copy_run(boundary.dir, tmp_path / "damaged", upto_step=8)
    damage(_ckpt(out, 8))
    assert not checkpoint.is_loadable(_ckpt(out, 8)) and checkpoint.is_loadable(_ckpt(out, 6))

    result = run_cli(*_args(out, 8, 3, "trainer.resume=auto"))
    assert result.code == 0, result.err[-3000:]
    warning = f"skipping damaged checkpoint {_ckpt(out, 8)}"
    assert warning in result.err
    assert warning in (out / "run.log").read_text()
    assert f"resumed from {_ckpt(out, 6)} at step 6" in result.err
    assert checkpoint.is_loadable(_ckpt(out, 8))  # rewritten whole by the resumed run
    assert [r["step"] for r in read_log(out) if r["type"] == "train"][-2:] == [7, 8]  # it trained 7 and 8 again


# ------------------------------------------------------------------ 4. disk full
def test_disk_full_on_save_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    from llmtune.engine import checkpoint

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(str(filename))
        if len(calls) == 2:  # the second checkpoint (step 4)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "run"
    # save_total_limit=1: had step-4 been (wrongly) taken as written, rotation would delete step-2.
    result = run_cli(*_args(out, 4, 3, "trainer.save_total_limit=1"))
    assert result.code == 3, result.err[-3000:]
    assert ".tmp-step-4" in calls[1]
    assert f"could not write checkpoint {_ckpt(out, 4)}" in result.err
    assert "No space left on device" in result.err
    assert f"last complete checkpoint is {_ckpt(out, 2)}" in result.err
    assert _names(out) == ["step-2"]  # not rotated away, no .tmp-step-* left
    assert checkpoint.is_loadable(_ckpt(out, 2))
    assert checkpoint.latest_checkpoint(out / "checkpoints") == _ckpt(out, 2)


# ------------------------------------------------------------------ 6. changed settings on resume
@pytest.mark.parametrize("override,change", [
    pytest.param("trainer.batch_size=2", "step_size: 3 -> 2", id="batch_size"),
    pytest.param("task.max_length=64", "max_length: 128 -> 64", id="max_length", marks=pytest.mark.slow),
])
def test_resume_with_a_changed_setting_is_refused(override, change, boundary, tmp_path):
    out = tmp_path / "other"
    result = run_cli(*_args(out, 8, 3, override, f"trainer.resume={_ckpt(boundary.dir, 4)}"))
    assert result.code == 2, result.err[-3000:]
    assert change in result.err
    assert "trainer.resume_allow_changes=true" in result.err
    assert not (out / "checkpoints").exists()


def test_resume_with_a_changed_task_is_refused_naming_the_task(boundary, tmp_path):
    args = [a for a in cls_args(tmp_path / "cls") if not a.startswith("trainer.batch_size=")]
    result = run_cli(*args, "trainer.batch_size=3", f"model.tokenizer={FIXED_TOKENIZER}", f"trainer.resume={_ckpt(boundary.dir, 4)}")
    assert result.code == 2, result.err[-3000:]
    assert "task: ner -> classification" in result.err


@pytest.mark.slow
def test_resume_allow_changes_accepts_a_batch_size_change(boundary, tmp_path):
    out = tmp_path / "allowed"
    result = run_cli(*_args(out, 6, 2, "trainer.resume_allow_changes=true", f"trainer.resume={_ckpt(boundary.dir, 4)}"))
    assert result.code == 0, result.err[-3000:]
    assert "changed settings (step_size: 3 -> 2)" in result.err
    assert sorted(_losses(out)) == [5, 6]


# ------------------------------------------------------------------ 7. LoRA resume
def _lora_modules(model) -> list[str]:
    return [name for name, module in model.named_modules() if re.search(r"\.lora_A\.[^.]+$", name) and isinstance(module, torch.nn.Linear)]


@pytest.mark.slow
def test_lora_run_resumes_as_lora_without_stacking_adapters(tmp_path):
    # batch 6: two steps per epoch (the resume at step 2 is on an epoch boundary); dropout on,
    # LoRA dropout too, so the continued losses match exactly only with the RNG restored.
    first, second = tmp_path / "first", tmp_path / "second"
    with _captured_fit() as trainers:
        assert run_cli(*_args(first, 4, 6, "peft=lora")).code == 0
        result = run_cli(*_args(second, 4, 6, "peft=lora", f"trainer.resume={_ckpt(first, 2)}"))
    assert result.code == 0, result.err[-3000:]
    fresh, resumed = (t.model for t in trainers)
    assert len(_lora_modules(fresh)) > 0
    assert _lora_modules(resumed) == _lora_modules(fresh)
    assert not [n for n, _ in resumed.named_modules() if n.count("base_model") > 1]  # no adapter on adapter
    assert json.loads((second / "final" / "llmtune.json").read_text())["peft"] == "lora"
    assert (second / "final" / "adapter_config.json").is_file()
    expected = _losses(first)
    assert _losses(second) == {3: expected[3], 4: expected[4]}

    # a full fine-tune cannot continue from the adapter checkpoint
    refused = run_cli(*_args(tmp_path / "full", 4, 6, "peft=none", f"trainer.resume={_ckpt(first, 2)}"))
    assert refused.code == 2, refused.err[-3000:]
    assert "trainer.resume" in refused.err and "peft" in refused.err
    assert not (tmp_path / "full" / "checkpoints").exists()


# ------------------------------------------------------------------ 8. NaN / inf
def test_nonfinite_loss_stops_with_exit_3_and_no_checkpoint_of_it(tmp_path):
    from llmtune.engine import checkpoint

    out = tmp_path / "run"
    with nan_loss_at_call(3):
        result = run_cli(*_args(out, 4, 3))
    assert result.code == 3, result.err[-3000:]
    assert "step 3: non-finite values (loss nan" in result.err
    assert f"last good: {_ckpt(out, 2)}" in result.err
    assert _names(out) == ["step-2"]  # no step-3, no step-4, no .tmp
    assert checkpoint.is_loadable(_ckpt(out, 2))
    assert sorted(_losses(out)) == [1, 2]


def _skip_run(factory) -> SimpleNamespace:
    if "skip" not in _RUNS:
        out = factory.mktemp("skip") / "run"
        with nan_loss_at_call(3) as calls:
            result = run_cli(*_args(out, 4, 3, "trainer.skip_nonfinite=1"))
        _RUNS["skip"] = SimpleNamespace(dir=out, result=result, calls=len(calls))
    return _RUNS["skip"]


@pytest.mark.slow
def test_skip_nonfinite_completes_and_reports_the_skipped_batch(tmp_path_factory):
    run = _skip_run(tmp_path_factory)
    assert run.result.code == 0, run.result.err[-3000:]
    message = "step 3: non-finite values (loss nan"
    assert message in run.result.err and "batch skipped (1 of 1 allowed by trainer.skip_nonfinite)" in run.result.err
    assert message in (run.dir / "run.log").read_text()
    assert run.calls == 5  # 4 steps + the skipped batch
    assert sorted(_losses(run.dir)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_losses_logged_after_a_skipped_batch_are_finite(tmp_path_factory):
    run = _skip_run(tmp_path_factory)
    assert run.result.code == 0
    records = [r for r in read_log(run.dir) if r["type"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one record per optimizer step
    assert all(math.isfinite(r["loss"]) for r in records), records


# ------------------------------------------------------------------ 9. unlabelled examples
def test_drop_unlabelled_unit(caplog):
    from datasets import Dataset, DatasetDict

    from llmtune.data.load import _drop_unlabelled

    data = DatasetDict({
        "train": Dataset.from_dict({"input_ids": [[1, 2], [1, 2, 3], [1]], "labels": [[-100, -100], [-100, 4, -100], [-100]]}),
        "validation": Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[3, -100]]}),
    })
    with caplog.at_level(logging.WARNING, logger="llmtune"):
        out = _drop_unlabelled(data)
    assert out["train"]["labels"] == [[-100, 4, -100]]
    assert len(out["validation"]) == 1
    assert "train: dropped 2 of 3 examples with no labelled token" in caplog.text
    assert "validation" not in caplog.text


@pytest.mark.slow
def test_example_without_labels_is_dropped_with_a_warning(tmp_path):
    data = ASSETS / "ner_unlabelled.jsonl"  # 9 sentences, one of them empty
    args = [a for a in _args(tmp_path / "run", 4, 2) if not a.startswith("data.")]
    result = run_cli(*args, f"data.train_file={data}", f"data.validation_file={data}", "data.cache=false")
    assert result.code == 0, result.err[-3000:]
    assert "train: dropped 1 of 9 examples with no labelled token" in result.err
    assert "data: train 8, validation 8" in result.err
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(v > 0.1 and math.isfinite(v) for v in losses.values()), losses


@pytest.mark.slow
def test_unlabelled_batch_reaching_the_loop_is_skipped_not_a_zero_loss(tmp_path, monkeypatch):
    """Second line of defence: with the preprocessing filter removed, a batch of only the empty
    example is skipped with a warning and no 0.0 loss is logged."""
    from llmtune.data import load

    monkeypatch.setattr(load, "_drop_unlabelled", lambda data: data)
    data = ASSETS / "ner_unlabelled.jsonl"
    args = [a for a in _args(tmp_path / "run", 9, 1, "trainer.group_by_length=false") if not a.startswith(("data.", "trainer.save_every="))]
    result = run_cli(*args, f"data.train_file={data}", f"data.validation_file={data}", "data.cache=false", "trainer.save_every=null")
    assert result.code == 0, result.err[-3000:]
    assert "no labelled position in this batch (all labels ignored); skipped, not counted as a zero loss" in result.err
    records = [r for r in read_log(tmp_path / "run") if r["type"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 10))  # one record per optimizer step
    assert all(r["loss"] > 0.1 and math.isfinite(r["loss"]) for r in records), records


# ------------------------------------------------------------------ 17. tokenizer without a pad token
def _no_pad_tokenizer(directory: Path) -> Path:
    from conftest import corpus_lines
    from llmtune.tokenization import train_tokenizer

    tok = train_tokenizer(corpus_lines(), decoder=True, vocab_size=300)
    tok.pad_token = None
    tok.save_pretrained(directory)
    return directory


def test_tokenizer_without_pad_gets_eos_deterministically(tmp_path, caplog):
    from omegaconf import OmegaConf

    from llmtune.tasks.clm import CLMTask
    from llmtune.tokenization import load_tokenizer

    path = _no_pad_tokenizer(tmp_path / "tok")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(path).pad_token is None  # the saved one really has none
    cfg = OmegaConf.create({"tokenizer": str(path), "name_or_path": None, "trust_remote_code": False, "config": None, "tokenizer_vocab_size": 300})
    with caplog.at_level(logging.INFO, logger="llmtune"):
        first = load_tokenizer(cfg, CLMTask(), [])
        second = load_tokenizer(cfg, CLMTask(), [])
    for tok in (first, second):
        assert tok.pad_token == tok.eos_token == "<|endoftext|>"
        assert tok.pad_token_id == tok.eos_token_id
    assert "no pad token; using its EOS token '<|endoftext|>' for padding" in caplog.text


def test_clm_labels_keep_the_eos_position_when_pad_is_eos():
    from llmtune.tasks.clm import shift_labels

    eos = 0  # pad id == eos id
    input_ids = torch.tensor([[5, 6, 7, eos], [8, 9, eos, eos]])  # row 2: eos then one pad
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = shift_labels(input_ids, attention_mask)
    assert labels.tolist() == [[6, 7, eos, -100], [9, eos, -100, -100]]


@pytest.mark.slow
def test_pretrain_clm_with_a_tokenizer_without_pad(tmp_path):
    path = _no_pad_tokenizer(tmp_path / "tok")
    out = tmp_path / "run"
    result = run_cli(*lm_args("clm", out), f"model.tokenizer={path}")
    assert result.code == 0, result.err[-3000:]
    message = "the tokenizer has no pad token; using its EOS token '<|endoftext|>' for padding"
    assert message in result.err and message in (out / "run.log").read_text()
    saved = json.loads((out / "final" / "tokenizer_config.json").read_text())
    assert saved["pad_token"] == saved["eos_token"] == "<|endoftext|>"
    assert all(math.isfinite(v) for v in _losses(out).values())


# ------------------------------------------------------------------ 18. out of memory
def test_out_of_memory_exits_3_with_a_hint_and_no_checkpoint_of_the_step(tmp_path, monkeypatch):
    from llmtune import models
    from llmtune.engine import checkpoint

    real, calls = models.load_model, []

    def load_model(*args, **kwargs):
        model = real(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == 2:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(models, "load_model", load_model)
    out = tmp_path / "run"
    result = run_cli(*_args(out, 4, 3, "trainer.save_every=1"))
    assert result.code == 3, result.err[-3000:]
    assert "out of memory at step 2" in result.err
    assert "trainer.batch_size" in result.err and "trainer.grad_accum" in result.err
    assert _names(out) == ["step-1"]
    assert checkpoint.is_loadable(_ckpt(out, 1))


# ------------------------------------------------------------------ 20. a used output_dir
def test_fresh_run_into_a_used_output_dir_is_refused_and_changes_nothing(boundary, tmp_path):
    out = _copy_run(boundary.dir, tmp_path / "used")
    assert (out / ".hydra" / "config.yaml").is_file()
    before = _snapshot(out)
    result = run_cli(*_args(out, 2, 3))
    assert result.code == 2, result.err[-3000:]
    assert "trainer.resume" in result.err and "trainer.overwrite_output_dir=true" in result.err
    assert _snapshot(out) == before


@pytest.mark.slow
def test_overwrite_output_dir_replaces_the_run(boundary, tmp_path):
    out = _copy_run(boundary.dir, tmp_path / "used")
    result = run_cli(*_args(out, 2, 3, "trainer.overwrite_output_dir=true"))
    assert result.code == 0, result.err[-3000:]
    assert _names(out) == ["step-2"]  # the old step-4..8 are gone
    assert sorted(_losses(out)) == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 2
    assert "overwrite_output_dir=true" in (out / ".hydra" / "overrides.yaml").read_text()
