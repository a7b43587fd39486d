"""Gradient accumulation is exact on variable-length, padded data: batch 32 × accum 1, 8 × 4 and
4 × 8 give the same per-step losses and final parameters, because a step's loss is the sum over
all its labelled tokens divided by their count — not a mean of per-micro-batch means, which this
data makes measurably different (checked by hand below, so the comparison could fail).

(File name: tests/integration/test_accumulation.py exists, and two test modules with the same
basename cannot be collected together without __init__.py files.)

The data (tests/assets/ner_varlen.jsonl) is 32 NER sentences (IOB2) of 1 to 34 words, so micro-batches
hold very different numbers of labelled tokens. NER rather than classification: a
classification example has exactly one target, so equal-sized micro-batches make the naive mean
equal to the exact one and the test could not tell them apart.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import ASSETS, FIXED_TOKENIZER, NO_DROPOUT, ner_args, read_log, run_cli

VARLEN = ASSETS / "ner_varlen.jsonl"
SPLITS = [(32, 1), (8, 4), (4, 8)]
STEPS = 2
TOL = 1e-5


def _args(out, batch: int, accum: int) -> list[str]:
    base = [a for a in ner_args(out, steps=STEPS) if not a.startswith(("data.train_file=", "data.validation_file=", "trainer.batch_size=", "trainer.eval_every="))]
    return [
        *base, f"data.train_file={VARLEN}", f"data.validation_file={VARLEN}", f"trainer.batch_size={batch}",
        f"trainer.grad_accum={accum}", "trainer.eval_every=null", f"model.tokenizer={FIXED_TOKENIZER}", *NO_DROPOUT,
    ]


def _first_step_by_hand(trainer) -> dict:
    """Step 1's loss computed outside the loop from the initial model and the same micro-batches:
    exact (token-weighted) and naive (mean of the micro-batch means)."""
    from llmtune.engine.loop import _StepBatches
    from llmtune.engine.loss import count_targets, cross_entropy_sum

    accum = trainer.tcfg.grad_accum
    micro = trainer.plan.micro_batches(0, 0)[:accum]
    source = _StepBatches(trainer.datasets["train"], micro, trainer.task.collator(trainer.tokenizer, train=True), trainer.seed, 0)
    sums, counts, widths = [], [], []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for k in range(accum):
            batch = dict(source[k])
            labels = batch.pop("labels")
            sums.append(float(cross_entropy_sum(trainer.model(**batch).logits, labels)))
            counts.append(count_targets(labels))
            widths.append(labels.shape[1])
    return {
        "exact": sum(sums) / sum(counts),
        "naive": sum(s / c for s, c in zip(sums, counts, strict=True)) / accum,
        "counts": counts,
        "widths": widths,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from llmtune.engine import loop

    out = {}
    real_fit = loop.fit
    for batch, accum in SPLITS:
        run_dir = tmp_path_factory.mktemp(f"b{batch}a{accum}") / "run"
        by_hand = {}

        def fit(trainer, by_hand=by_hand):
            by_hand.update(_first_step_by_hand(trainer))
            return real_fit(trainer)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop, "fit", fit)
            result = run_cli(*_args(run_dir, batch, accum))
        assert result.code == 0, result.err[-3000:]
        losses = {r["step"]: r["loss"] for r in read_log(run_dir) if r["type"] == "train"}
        out[(batch, accum)] = {"dir": run_dir, "losses": losses, "by_hand": by_hand}
    return out


def test_same_per_step_losses(runs):
    reference = runs[(32, 1)]["losses"]
    assert sorted(reference) == list(range(1, STEPS + 1))
    for split in SPLITS[1:]:
        losses = runs[split]["losses"]
        assert sorted(losses) == sorted(reference)
        for step in reference:
            assert abs(losses[step] - reference[step]) < TOL, (split, step, losses[step], reference[step])


def test_same_final_parameters(runs):
    reference = load_file(runs[(32, 1)]["dir"] / "final" / "model.safetensors")
    for split in SPLITS[1:]:
        weights = load_file(runs[split]["dir"] / "final" / "model.safetensors")
        assert weights.keys() == reference.keys()
        for name in reference:
            diff = (weights[name] - reference[name]).abs().max().item()
            assert diff < TOL, (split, name, diff)


def test_naive_mean_of_micro_batch_means_would_differ(runs):
    """The loop's step-1 loss equals the token-weighted loss computed by hand, and the naive mean
    of micro-batch means differs by more than the tolerance: a naive loop would fail above."""
    reference = runs[(32, 1)]
    assert abs(reference["by_hand"]["exact"] - reference["losses"][1]) < TOL
    for split in SPLITS[1:]:
        run = runs[split]
        hand = run["by_hand"]
        assert len(set(hand["counts"])) > 1, hand  # micro-batches hold different token counts
        assert len(set(hand["widths"])) > 1, hand  # and are padded to different lengths
        assert abs(hand["exact"] - run["losses"][1]) < TOL, (split, hand, run["losses"][1])
        assert abs(hand["exact"] - reference["losses"][1]) < TOL
        assert abs(hand["naive"] - hand["exact"]) > TOL, (split, hand)
