"""Evaluation hardening: a stop signal ends an evaluation between batches; the split drawn by
data.validation_split is capped; the evaluation loss counts every example once, whatever the
number of processes; and final/ gets the final weights unless trainer.load_best asks for the
best checkpoint and it beats them by more than the validation set's noise."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import (
    ASSETS,
    FIXED_TOKENIZER,
    NO_DROPOUT,
    ROOT,
    cls_args,
    lm_args,
    ner_args,
    read_log,
    run_cli,
    subprocess_env,
)


# ------------------------------------------------------------------ 1. SIGTERM during evaluation
@pytest.fixture
def signal_in_eval(monkeypatch):
    """Send SIGTERM `times` times from inside the `at`-th evaluation batch of the run (counted
    over all evaluations); returns the list of batches evaluated so far."""
    from llmtune.tasks import common

    real, batches = common.per_example_loss, []

    def arm(at: int, times: int = 1):
        def per_example_loss(*args):
            batches.append(1)
            if len(batches) == at:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before os.kill returns
            return real(*args)

        monkeypatch.setattr(common, "per_example_loss", per_example_loss)
        return batches

    return arm


def _ner(out: Path, *extra: str) -> list[str]:
    base = [a for a in ner_args(out, steps=4) if not a.startswith("trainer.eval_every")]
    return [*base, "trainer.eval_every=2", "trainer.eval_batch_size=2", f"model.tokenizer={FIXED_TOKENIZER}", *extra]


def test_sigterm_during_evaluation_stops_it_between_batches_and_checkpoints(signal_in_eval, tmp_path):
    from llmtune.engine import checkpoint

    out = tmp_path / "run"
    batches = signal_in_eval(at=1, times=2)  # the first batch of the evaluation at step 2
    result = run_cli(*_ner(out))
    assert result.code == 143, result.err[-3000:]
    assert len(batches) == 1  # the evaluation (6 batches of the 12 sentences) ended after its first
    assert "stopped by signal at step 2, in the validation evaluation after 1 of 6 batches; " \
           f"checkpoint written to {out / 'checkpoints' / 'step-2'}. Continue with trainer.resume=auto" in result.err
    # Both messages say what happens: no checkpoint was being written while evaluating.
    plan = "ending the evaluation before its next batch, writing a checkpoint of step 2, then stopping"
    assert f"SIGTERM: {plan}" in result.err
    assert f"SIGTERM again: already stopping ({plan})" in result.err
    assert "being written" not in result.err
    assert checkpoint.is_loadable(out / "checkpoints" / "step-2")
    assert json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())["step"] == 2
    assert [r for r in read_log(out) if r["type"] == "eval"] == []  # the unfinished evaluation is not recorded

    resumed = run_cli(*_ner(out), "trainer.resume=auto")
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} at step 2" in resumed.err
    assert [r["step"] for r in read_log(out) if r["type"] == "eval"] == [4]


def test_sigterm_during_the_evaluation_at_step_0_writes_no_checkpoint(signal_in_eval, tmp_path):
    out = tmp_path / "run"
    batches = signal_in_eval(at=2)
    args = [a for a in cls_args(out, steps=4) if not a.startswith("trainer.eval_every")]
    args = [*args, "trainer.eval_at_start=true", "trainer.eval_batch_size=4", f"model.tokenizer={FIXED_TOKENIZER}"]
    result = run_cli(*args)
    assert result.code == 143, result.err[-3000:]
    assert len(batches) == 2
    assert "SIGTERM: ending the evaluation before its next batch, then stopping (nothing trained yet, so no checkpoint)" in result.err
    assert "stopped by signal at step 0, in the validation evaluation after 2 of 4 batches; nothing was trained yet, " \
           "so no checkpoint was written. Start again with the same command" in result.err
    assert not (out / "checkpoints").exists()
    again = run_cli(*args)  # as the message says
    assert again.code == 0, again.err[-3000:]
    assert len(batches) > 4 and (out / "metrics.json").is_file()


def test_sigterm_during_the_test_evaluation_keeps_the_checkpoint_it_has(signal_in_eval, tmp_path, monkeypatch):
    from llmtune.engine import checkpoint

    saves, real_save = [], checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, **k: saves.append(a[1].step) or real_save(*a, **k))
    out = tmp_path / "run"
    batches = signal_in_eval(at=13)  # validation at steps 2 and 4 take 6 batches each; then the test split
    result = run_cli(*_ner(out, f"data.test_file={ASSETS / 'ner_dev.conll'}"))
    assert result.code == 143, result.err[-3000:]
    assert len(batches) == 13
    assert "SIGTERM: ending the evaluation before its next batch, then stopping (step 4 is checkpointed already)" in result.err
    assert "stopped by signal at step 4, in the test evaluation after 1 of 6 batches; checkpoint written to " \
           f"{out / 'checkpoints' / 'step-4'}." in result.err
    assert saves == [2, 4]  # no second save of step 4
    assert not (out / "metrics.json").exists() and not (out / "final").exists()


RANK1_SIGNAL = '''\
"""Test fault injection (tests/integration/test_eval_hardening.py): rank 1 alone gets SIGTERM
in its second evaluation batch."""
import os

if os.environ.get("RANK") == "1":
    import signal

    from llmtune.tasks import common

    _real, _calls = common.per_example_loss, []

    def per_example_loss(*args):
        _calls.append(1)
        if len(_calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return _real(*args)

    common.per_example_loss = per_example_loss
'''


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_eval_batch(tmp_path):
    """The ranks agree on the signal before each batch; one that went on alone would wait in
    the next collective for ever."""
    from llmtune.engine import checkpoint

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RANK1_SIGNAL)
    env = {**subprocess_env(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    out = tmp_path / "run"
    args = [a for a in ner_args(out, steps=4) if a != "finetune"] + ["trainer.eval_batch_size=1", f"model.tokenizer={FIXED_TOKENIZER}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, "-m", "llmtune", "finetune", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # 12 sentences at eval batch 1: 6 batches per rank; rank 0 was never signalled itself.
    assert "(rank 0): stopped by signal at step 2, in the validation evaluation after 2 of 6 batches; checkpoint written to " \
           f"{out / 'checkpoints' / 'step-2'}." in proc.stderr, proc.stderr[-4000:]
    assert checkpoint.is_loadable(out / "checkpoints" / "step-2")


# ------------------------------------------------------------------ 2. validation_split cap
def test_held_out_size_caps_only_above_the_cap(caplog):
    from llmtune.data.load import held_out_size

    assert held_out_size(0.1, 5000, 40_000) == 0.1  # 4,000 rows: under the cap, unchanged
    assert held_out_size(0.1, None, 400_000) == 0.1
    with caplog.at_level(logging.INFO, logger="llmtune"):
        assert held_out_size(0.1, 5000, 400_000) == 5000
    assert "would hold out 40000 of 400000 training examples; holding out 5000 (data.validation_split_max), " \
           "the other 35000 stay in training" in caplog.text


def _data_cfg(**overrides):
    base = {"name": None, "config_name": None, "train_file": str(ASSETS / "cls_train.jsonl"), "validation_file": None,
            "test_file": None, "columns": None, "validation_split": 0.5, "validation_split_max": 5000,
            "max_train_samples": None, "max_eval_samples": None}
    return OmegaConf.create({**base, **overrides})


def test_validation_split_is_capped_and_logged(caplog):
    from llmtune.data.load import load_raw
    from llmtune.tasks.classification import ClassificationTask

    task = ClassificationTask()
    uncapped, fp_uncapped = load_raw(_data_cfg(), task, seed=3)
    with caplog.at_level(logging.INFO, logger="llmtune"):
        capped, fp_capped = load_raw(_data_cfg(validation_split_max=3), task, seed=3)
    rows = len(uncapped["train"]) + len(uncapped["validation"])
    assert len(uncapped["validation"]) == math.ceil(0.5 * rows)
    assert len(capped["validation"]) == 3 and len(capped["train"]) == rows - 3  # the rest stay in training
    assert f"would hold out {math.ceil(0.5 * rows)} of {rows} training examples; holding out 3" in caplog.text
    assert "capped at 3 rows" in capped["validation"].info.description
    assert fp_capped != fp_uncapped  # the tokenized cache and resume checks see the change


def test_validation_split_max_below_one_is_refused(tmp_path):
    out = tmp_path / "run"
    result = run_cli(*cls_args(out), "data.validation_split_max=0")
    assert result.code == 2
    assert "data.validation_split_max=0: must be at least 1" in result.err
    assert "Traceback" not in result.err and not out.exists()


# ------------------------------------------------------------------ 3. loss aggregation
class _Model(torch.nn.Module):
    """Logits from an embedding of the input ids: deterministic, no padding effects."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 7)
        torch.nn.init.normal_(self.emb.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.emb(input_ids))


def _examples(n: int = 7) -> list[dict]:
    """Examples with very unequal numbers of labelled tokens (1 to 13)."""
    g = torch.Generator().manual_seed(1)
    lengths = [13, 1, 9, 2, 6, 3, 11][:n]
    return [{"input_ids": torch.randint(0, 50, (k,), generator=g), "labels": torch.randint(0, 7, (k,), generator=g)} for k in lengths]


def _collate(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])], labels[i, : len(r["labels"])] = r["input_ids"], r["labels"]
    return {"input_ids": ids, "labels": labels}


def _reference_loss(model, examples) -> float:
    """Mean cross-entropy over every labelled token of the split, one forward per example."""
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(e["input_ids"][None]).logits[0], e["labels"], reduction="none") for e in examples]
    return float(torch.cat(losses).double().mean())


class _OneProcess:
    device = torch.device("cpu")

    def gather_for_metrics(self, data):
        return data


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_eval_loss_is_per_token_over_the_split_for_any_batching(batch_size):
    from llmtune.tasks.common import run_eval

    model, examples = _Model(), _examples()
    loader = [_collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    assert run_eval(model, loader, _OneProcess()).loss == pytest.approx(_reference_loss(model, examples), rel=1e-9)


def test_eval_loss_over_an_uneven_split_on_two_processes_counts_each_example_once():
    """Two ranks (threads standing in for processes) as accelerate shards 7 examples at batch 2
    with even batches: rank 0 gets [0 1] [4 5], rank 1 gets [2 3] [6 0], example 0 repeated to
    even out the last batch. gather_for_metrics concatenates in rank order and truncates the
    last gather to the remainder (7 % 4 = 3), as accelerate's does."""
    from llmtune.tasks.common import run_eval

    model, examples = _Model(), _examples()
    shards = {0: [[0, 1], [4, 5]], 1: [[2, 3], [6, 0]]}
    barrier, slots, results = threading.Barrier(2), [None, None], {}

    class Rank:
        device = torch.device("cpu")

        def __init__(self, rank: int) -> None:
            self.rank, self.calls = rank, 0

        def gather_for_metrics(self, data):
            slots[self.rank] = data
            barrier.wait()
            gathered = tuple(torch.cat([slot[i] for slot in slots]) for i in range(len(data)))
            barrier.wait()
            self.calls += 1
            return tuple(t[:3] for t in gathered) if self.calls == len(shards[self.rank]) else gathered

    def rank_main(rank: int) -> None:
        loader = [_collate([examples[i] for i in batch]) for batch in shards[rank]]
        results[rank] = run_eval(model, loader, Rank(rank))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    single = _reference_loss(model, examples)
    assert results[0].loss == results[1].loss == pytest.approx(single, rel=1e-9)
    assert results[0].examples == 7
    # What counting the repeated example 0 would have given: a different number.
    assert _reference_loss(model, [*examples, examples[0]]) != pytest.approx(single, rel=1e-4)


def test_loss_stderr_is_the_standard_error_of_the_mean_for_one_token_examples():
    from llmtune.tasks.common import loss_stats

    sums = torch.tensor([0.5, 1.5, 0.25, 2.0, 1.0], dtype=torch.float64)
    stats = loss_stats(sums, torch.ones(5, dtype=torch.long))
    assert stats.loss == pytest.approx(float(sums.mean()))
    assert stats.stderr == pytest.approx(float(sums.std() / math.sqrt(5)))


@pytest.mark.slow
def test_two_processes_report_the_validation_loss_of_one(tmp_path):
    """12 validation sentences at eval batch 5 on 2 processes: the last round has 2 sentences for
    2 x 5 places, so accelerate repeats sentences there (counting them moved the loss by ~1e-3)."""
    env = subprocess_env(tmp_path / "cache")
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = [a for a in ner_args(out, steps=2) if a != "finetune" and not a.startswith("trainer.batch_size")]
        args += [f"trainer.batch_size={8 // procs}", "trainer.eval_batch_size=5", f"model.tokenizer={FIXED_TOKENIZER}",
                 f"data.test_file={ASSETS / 'ner_dev.conll'}", *NO_DROPOUT]
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        proc = subprocess.run([*launcher, "-m", "llmtune", "finetune", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[procs] = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert runs[2][split]["loss"] == pytest.approx(runs[1][split]["loss"], rel=1e-5, abs=1e-6), split
        assert runs[2][split]["f1"] == runs[1][split]["f1"]


# ------------------------------------------------------------------ 4. which weights ship
def _clm(out: Path, *extra: str) -> list[str]:
    """At lr 1.0 the validation loss after step 2 is worse than after step 1 by far more than
    its standard error (5 validation blocks)."""
    base = [a for a in lm_args("clm", out, steps=2) if not a.startswith("trainer.eval_every")]
    return [*base, "trainer.eval_every=1", "optimizer.lr=1.0", "scheduler=constant", *extra]


def _weights_run(out: Path, *extra: str) -> tuple[dict, dict, str]:
    result = run_cli(*_clm(out, *extra))
    assert result.code == 0, result.err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    evals = {r["step"]: r["loss"] for r in read_log(out) if r["type"] == "eval"}
    weights = metrics["weights"]
    assert weights["final"] == {"step": 2, "loss": evals[2]} and weights["best"] == {"step": 1, "loss": evals[1]}
    assert evals[2] - evals[1] > metrics["validation"].get("loss_stderr", 0)  # the premise: step 1 is clearly better
    return metrics, evals, result.err


def test_load_best_defaults_to_the_final_weights(tmp_path):
    metrics, evals, err = _weights_run(tmp_path / "run")
    assert metrics["weights"]["shipped"] == "final" and metrics["weights"]["load_best"] is False
    assert metrics["validation"]["loss"] == evals[2]
    assert metrics["weights"]["margin"] == metrics["validation"]["loss_stderr"]
    assert f"validation loss: final weights (step 2) {evals[2]:.4f}, best checkpoint (step 1) {evals[1]:.4f}" in err
    assert "Shipping the final weights: trainer.load_best=false" in err
    assert "loaded the best checkpoint" not in err


def test_load_best_within_the_margin_keeps_the_final_weights(tmp_path):
    metrics, evals, err = _weights_run(tmp_path / "run", "trainer.load_best=true", "trainer.load_best_margin=1000")
    assert metrics["weights"]["shipped"] == "final" and metrics["weights"]["margin"] == 1000
    assert metrics["validation"]["loss"] == evals[2]
    assert "not more than the margin" in metrics["weights"]["reason"] and "not more than the margin" in err


def test_load_best_beyond_the_default_margin_ships_the_best_checkpoint(tmp_path):
    metrics, evals, err = _weights_run(tmp_path / "run", "trainer.load_best=true")
    assert metrics["weights"]["shipped"] == "best" and metrics["weights"]["step"] == 1
    assert "one standard error of loss over 5 validation examples" in metrics["weights"]["margin_from"]
    assert metrics["validation"]["loss"] == pytest.approx(evals[1], rel=1e-6)  # re-evaluated: step 1's weights
    assert "loaded the best checkpoint (step 1" in err and "Shipping the best checkpoint (step 1)" in err


def _chooser(final_f1: float, best_f1: float, n: int, load_best: bool, margin=None):
    """A fit at its end (step 10, best at step 4), for the NER-like case in the issue: F1 on
    a 50-sentence validation set."""
    from llmtune.engine.loop import _Fit
    from llmtune.tasks.common import proportion_stderr

    fit = _Fit.__new__(_Fit)
    fit.state = SimpleNamespace(step=10, best_step=4, best_metric=best_f1)
    fit.task = SimpleNamespace(main_metric="f1", greater_is_better=True)
    fit.t = OmegaConf.create({"load_best": load_best, "load_best_margin": margin})
    fit.trainer = SimpleNamespace(datasets={"validation": [None] * n}, run_dir=Path("/nonexistent"))
    fit.last_metrics = {"f1": final_f1, "f1_stderr": proportion_stderr(final_f1, n)}
    fit.saved_step, fit.weights, fit.acc, fit.model = 10, None, None, None
    return fit


@pytest.mark.parametrize(("best", "load_best", "shipped"), [
    (0.812, True, "final"),    # the case: a lead of 0.012, well inside one standard error (~0.05)
    (0.812, False, "final"),
    (0.95, False, "final"),    # opt-in only
    (0.95, True, "best"),      # a lead of 0.15: more than the noise
])
def test_the_margin_rule(best, load_best, shipped, monkeypatch):
    from llmtune.engine import checkpoint

    loaded = []
    monkeypatch.setattr(checkpoint, "is_loadable", lambda path: True)
    monkeypatch.setattr(checkpoint, "load_weights", lambda path, model, acc: loaded.append(path.name))
    fit = _chooser(0.80, best, 50, load_best)
    monkeypatch.setattr(fit, "evaluate", lambda split: {"f1": best}, raising=False)
    validation = fit._choose_weights()
    assert fit.weights["shipped"] == shipped
    assert fit.weights["final"] == {"step": 10, "f1": 0.80} and fit.weights["best"] == {"step": 4, "f1": best}
    assert 0.05 < fit.weights["margin"] < 0.06  # sqrt(p(1-p)/n) at n=50, p near 0.8
    assert validation["f1"] == (best if shipped == "best" else 0.80)
    assert loaded == (["step-4"] if shipped == "best" else [])


def test_load_best_margin_below_zero_is_refused(tmp_path):
    result = run_cli(*cls_args(tmp_path / "run"), "trainer.load_best_margin=-0.1")
    assert result.code == 2 and "trainer.load_best_margin=-0.1: must be at least 0" in result.err
