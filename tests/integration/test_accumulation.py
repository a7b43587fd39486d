"""Gradient accumulation: batch 8, 4 × 2 and 2 × 4 make the same updates (the loss of a step is
normalised by the labelled positions of the whole step, not averaged per micro-batch)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXED_TOKENIZER, NO_DROPOUT, ner_args, read_log, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        run_dir = tmp_path_factory.mktemp(f"b{batch}a{accum}") / "run"
        args = [a for a in ner_args(run_dir, steps=2) if not a.startswith("trainer.batch_size")]
        result = run_cli(*args, f"trainer.batch_size={batch}", f"trainer.grad_accum={accum}",
                         f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT)
        assert result.code == 0, result.err[-3000:]
        out[(batch, accum)] = run_dir
    return out


def _train(run_dir):
    return [r for r in read_log(run_dir) if r["type"] == "train"]


def test_same_losses_and_gradients(runs):
    reference = _train(runs[(8, 1)])
    assert [r["step"] for r in reference] == [1, 2]
    for key in ((4, 2), (2, 4)):
        records = _train(runs[key])
        assert [r["step"] for r in records] == [1, 2]
        for a, b in zip(reference, records, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), key
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), key


def test_same_final_weights(runs):
    reference = load_file(runs[(8, 1)] / "final" / "model.safetensors")
    for key in ((4, 2), (2, 4)):
        weights = load_file(runs[key] / "final" / "model.safetensors")
        assert weights.keys() == reference.keys()
        for name in reference:
            assert torch.allclose(weights[name], reference[name], atol=1e-5), (key, name)
