"""Resuming from a checkpoint gives exactly the run that was never interrupted.

Most runs use a saved tokenizer (tests/assets/tiny_wordpiece), so that they test the loop and
not tokenizer training (which test_resume_of_a_model_with_a_trained_tokenizer covers), and no
dropout (test_resume_with_dropout_matches covers dropout).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, ner_args, read_log, run_cli

PEFTS = ["none", "lora"]



def _args(out: Path, peft: str, *extra: str, tokenizer: Path | None = FIXED_TOKENIZER, dropout: bool = False) -> list[str]:
    fixed = [f"model.tokenizer={tokenizer}"] if tokenizer else []
    if not dropout:
        fixed += NO_DROPOUT + (["peft.dropout=0"] if peft == "lora" else [])
    return [*ner_args(out, steps=4), *fixed, f"peft={peft}", "trainer.save_every=2", "trainer.eval_every=null", *extra]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


_STRAIGHT: dict[str, SimpleNamespace] = {}


def _straight_run(peft: str, factory) -> SimpleNamespace:
    """An uninterrupted 4-step run, checkpointed at steps 2 and 4 (made once per module)."""
    if peft not in _STRAIGHT:
        out = factory.mktemp(f"straight-{peft}") / "run"
        result = run_cli(*_args(out, peft))
        assert result.code == 0, result.err[-3000:]
        _STRAIGHT[peft] = SimpleNamespace(dir=out, peft=peft, root=out.parent)
    return _STRAIGHT[peft]


@pytest.fixture(scope="module", params=PEFTS)
def straight(request, tmp_path_factory):
    return _straight_run(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def straight_full(tmp_path_factory):
    return _straight_run("none", tmp_path_factory)


def test_straight_run_wrote_checkpoints(straight):
    names = sorted(p.name for p in (straight.dir / "checkpoints").iterdir())
    assert names == ["step-2", "step-4"]
    assert json.loads((straight.dir / "checkpoints" / "step-2" / "state.json").read_text())["step"] == 2


def test_resume_from_a_checkpoint_path_matches_the_straight_run(straight):
    out = straight.root / "resumed"
    result = run_cli(*_args(out, straight.peft, f"trainer.resume={straight.dir / 'checkpoints' / 'step-2'}"))
    assert result.code == 0, result.err[-3000:]
    assert "resumed from" in result.err

    expected, got = _losses(straight.dir), _losses(out)
    assert sorted(got) == [3, 4]  # only the steps it ran
    assert got[3] == expected[3]
    assert got[4] == expected[4]
    _assert_same_weights(_final_weights(straight.dir), _final_weights(out))
    for key in ("validation",):
        a = json.loads((straight.dir / "metrics.json").read_text())[key]
        b = json.loads((out / "metrics.json").read_text())[key]
        assert a == b


def test_resume_auto_continues_from_the_latest_checkpoint(straight):
    # Pretend the straight run was killed just after its step-2 checkpoint.
    out = straight.root / "killed"
    shutil.copytree(straight.dir, out)
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "final")
    (out / "metrics.json").unlink()
    kept = [line for line in (out / "train_log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 2]
    (out / "train_log.jsonl").write_text("\n".join(kept) + "\n")

    result = run_cli(*_args(out, straight.peft, "trainer.resume=auto"))
    assert result.code == 0, result.err[-3000:]
    assert "step-2" in result.err and "resumed from" in result.err

    assert _losses(out) == _losses(straight.dir)
    _assert_same_weights(_final_weights(straight.dir), _final_weights(out))
    assert (out / "checkpoints" / "step-4" / "state.json").is_file()


def test_resume_auto_in_an_empty_directory_starts_fresh(straight_full, tmp_path):
    out = tmp_path / "fresh"
    result = run_cli(*_args(out, straight_full.peft, "trainer.resume=auto"))
    assert result.code == 0, result.err[-3000:]
    assert "resumed from" not in result.err
    assert _losses(out) == _losses(straight_full.dir)


def test_fresh_run_into_a_used_directory_is_refused(straight_full, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    previous = "# the config of an earlier run\n"
    (out / "config.yaml").write_text(previous)
    result = run_cli(*_args(out, straight_full.peft))
    assert result.code == 2
    assert "trainer.resume" in result.err
    assert (out / "config.yaml").read_text() == previous  # nothing already written is lost
    assert not (out / "train_log.jsonl").exists()


def test_resume_with_other_settings_is_refused(straight_full, tmp_path):
    other = "lora" if straight_full.peft == "none" else "none"
    result = run_cli(*_args(tmp_path / "other", other, f"trainer.resume={straight_full.dir / 'checkpoints' / 'step-2'}"))
    assert result.code == 2
    assert "trainer.resume" in result.err


def test_resume_from_a_damaged_checkpoint_is_refused(straight_full, tmp_path):
    damaged = tmp_path / "checkpoints" / "step-2"
    shutil.copytree(straight_full.dir / "checkpoints" / "step-2", damaged)
    (damaged / "state.json").write_text("{ not json")
    result = run_cli(*_args(tmp_path / "out", straight_full.peft, f"trainer.resume={damaged}"))
    assert result.code == 2
    assert "incomplete or corrupt" in result.err


def test_resume_of_a_model_with_a_trained_tokenizer(tmp_path):
    """A scratch model's tokenizer is trained again by the resumed run; it must come out the same."""
    first = tmp_path / "first"
    assert run_cli(*_args(first, "none", tokenizer=None)).code == 0
    second = tmp_path / "second"
    result = run_cli(*_args(second, "none", f"trainer.resume={first / 'checkpoints' / 'step-2'}", tokenizer=None))
    assert result.code == 0, result.err[-2000:]
    assert _losses(second) == {k: v for k, v in _losses(first).items() if k > 2}
    _assert_same_weights(_final_weights(first), _final_weights(second))


def test_resume_with_dropout_matches(tmp_path):
    first = tmp_path / "first"
    assert run_cli(*_args(first, "none", dropout=True)).code == 0
    second = tmp_path / "second"
    result = run_cli(*_args(second, "none", f"trainer.resume={first / 'checkpoints' / 'step-2'}", dropout=True))
    assert result.code == 0, result.err[-2000:]
    assert _losses(second) == {k: v for k, v in _losses(first).items() if k > 2}
    _assert_same_weights(_final_weights(first), _final_weights(second))
