"""The throughput and memory switches, end to end through the CLI: token-budget batches, the
device-side finite check, gradient checkpointing, 8-bit AdamW, parallel tokenization, compile."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, nan_loss_at_call, ner_args, read_log, run_cli


def _args(out: Path, steps: int = 4, *extra: str) -> list[str]:
    base = [a for a in ner_args(out, steps=steps) if not a.startswith("trainer.eval_every=")]
    return [*base, "trainer.eval_every=null", "trainer.save_every=2", f"model.tokenizer={FIXED_TOKENIZER}", *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


# ------------------------------------------------------------------ trainer.max_tokens
def test_token_budget_run_trains_and_a_resume_must_keep_the_budget(tmp_path):
    out = tmp_path / "run"
    result = run_cli(*_args(out, 4, "trainer.max_tokens=96"))
    assert result.code == 0, result.err[-3000:]
    assert "≤ 96 padded tokens per micro-batch" in result.err
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())

    changed = run_cli(*_args(tmp_path / "other", 4, "trainer.max_tokens=128", f"trainer.resume={out / 'checkpoints' / 'step-2'}"))
    assert changed.code == 2
    assert "max_tokens 96" in changed.err and "max_tokens 128" in changed.err


def test_token_budget_below_the_longest_example_is_refused(tmp_path):
    result = run_cli(*_args(tmp_path / "run", 4, "trainer.max_tokens=8"))
    assert result.code == 2
    assert "trainer.max_tokens=8 is smaller than the longest training example" in result.err


def test_token_budget_must_be_a_positive_integer(tmp_path):
    result = run_cli(*_args(tmp_path / "run", 4, "trainer.max_tokens=lots"))
    assert result.code == 2 and "trainer.max_tokens" in result.err and "integer" in result.err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ device-side finite check
@contextlib.contextmanager
def _deferred_check_with_nan_at_call(n: int):
    """Force the GPU code path (finite check left on the device, fused AdamW skipping the
    update) and make the n-th training loss NaN."""
    from llmtune.engine import finite

    with nan_loss_at_call(n), pytest.MonkeyPatch.context() as mp:
        mp.setattr(finite, "defer_check", lambda accelerator, optimizer: True)
        yield


def test_device_side_check_stops_at_the_next_log_without_applying_the_bad_update(tmp_path):
    out = tmp_path / "run"
    with _deferred_check_with_nan_at_call(3):
        result = run_cli(*_args(out, 6, "trainer.log_every=2"))
    assert result.code == 3, result.err[-3000:]
    assert "step 3: non-finite values (loss or gradient norm); its update was not applied" in result.err
    assert "stopped at step 4" in result.err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # nothing after the bad step


def test_device_side_check_skips_within_the_allowance_and_weights_stay_finite(tmp_path):
    out = tmp_path / "run"
    with _deferred_check_with_nan_at_call(3):
        result = run_cli(*_args(out, 4, "trainer.skip_nonfinite=1"))
    assert result.code == 0, result.err[-3000:]
    assert "1 update(s) with non-finite values skipped on the device by step 3" in result.err
    assert all(math.isfinite(v) for v in _losses(out).values())
    assert all(torch.isfinite(t).all() for t in _final(out).values())


# ------------------------------------------------------------------ gradient checkpointing
def test_gradient_checkpointing_trains_lora_with_the_same_losses(tmp_path):
    plain = run_cli(*_args(tmp_path / "plain", 3, "peft=lora"))
    ckpt = run_cli(*_args(tmp_path / "ckpt", 3, "peft=lora", "trainer.gradient_checkpointing=true"))
    assert plain.code == 0 and ckpt.code == 0, ckpt.err[-3000:]
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "ckpt")
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:  # dropout included: recomputation replays the same random state
        assert b[step] == pytest.approx(a[step], rel=1e-5)


# ------------------------------------------------------------------ 8-bit AdamW
def test_adamw8bit_trains_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    result = run_cli(*_args(straight, 4, "optimizer=adamw8bit", "optimizer.min_8bit_size=256", *NO_DROPOUT))
    assert result.code == 0, result.err[-3000:]
    state = torch.load(straight / "checkpoints" / "step-2" / "optimizer.pt", weights_only=False)
    quantized = [s["__bnb_optimizer_quant_state__"] for s in state["state"].values()]
    dtypes = {v.dtype for q in quantized for v in q.values() if isinstance(v, torch.Tensor)}
    assert torch.uint8 in dtypes  # the 8-bit moments are what was saved

    resumed = tmp_path / "resumed"
    result = run_cli(*_args(resumed, 4, "optimizer=adamw8bit", "optimizer.min_8bit_size=256", *NO_DROPOUT,
                            f"trainer.resume={straight / 'checkpoints' / 'step-2'}"))
    assert result.code == 0, result.err[-3000:]
    expected, got = _losses(straight), _losses(resumed)
    assert got == {3: expected[3], 4: expected[4]}
    a, b = _final(straight), _final(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adamw8bit_without_bitsandbytes_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    result = run_cli(*_args(tmp_path / "run", 2, "optimizer=adamw8bit"))
    assert result.code == 2
    assert "pip install 'llmtune[bnb]'" in result.err and len(result.err.strip().splitlines()[-1]) < 300


# ------------------------------------------------------------------ parallel tokenization
def test_tokenizing_in_two_processes_gives_the_same_run(tmp_path, monkeypatch):
    from datasets import Dataset

    real_map, seen = Dataset.map, []

    def map(self, *args, **kwargs):  # record what reaches datasets (a DatasetDict maps each split through here)
        seen.append(kwargs.get("num_proc"))
        return real_map(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", map)
    one = run_cli(*_args(tmp_path / "one", 2, "data.cache=false"))
    first, seen[:] = list(seen), []
    two = run_cli(*_args(tmp_path / "two", 2, "data.cache=false", "data.num_proc=2"))
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    # The setting reached the tokenizing map of every split, and only in the second run.
    assert first and set(first) == {None}
    assert 2 in seen and set(seen) <= {None, 2}
    assert _losses(tmp_path / "one") == _losses(tmp_path / "two")


# ------------------------------------------------------------------ torch.compile
@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path):
    eager = run_cli(*_args(tmp_path / "eager", 3, "trainer.pad_to_multiple_of=64", *NO_DROPOUT))
    compiled = run_cli(*_args(tmp_path / "compiled", 3, "trainer.compile=true", *NO_DROPOUT))
    assert eager.code == 0 and compiled.code == 0, compiled.err[-3000:]
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    # Parameter names in final/ are those of the eager model (compiled in place).
    assert _final(tmp_path / "eager").keys() == _final(tmp_path / "compiled").keys()
