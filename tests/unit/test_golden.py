"""Golden losses: a pinned tiny run reproduces the per-step losses checked in with the tests, and
two identical runs are bitwise identical (losses and final weights).

The run: tiny_bert NER on tests/assets (ner_train.conll / ner_dev.conll), the saved tokenizer
tests/assets/tiny_wordpiece, seed 42, batch 4, 6 steps, dropout on, log every step.

Floating-point results may change with the torch version, so the comparison is skipped when
torch's major.minor differs from the one the file was made with. To regenerate the file after an
intended change in the numbers:  LLMTUNE_REGEN_GOLDEN=1 pytest tests/unit/test_golden.py
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import ASSETS, FIXED_TOKENIZER, read_log, run_cli

GOLDEN = ASSETS / "golden_ner_tiny.json"
STEPS = 6
TOL = 1e-4


def _overrides(out) -> list[str]:
    """The pinned run; paths relative to tests/assets are filled in here."""
    return [
        "task=ner", "model=tiny_bert", "peft=none", "optimizer=adamw", "scheduler=linear", "seed=42",
        f"data.train_file={ASSETS / 'ner_train.conll'}", f"data.validation_file={ASSETS / 'ner_dev.conll'}",
        f"model.tokenizer={FIXED_TOKENIZER}", f"trainer.max_steps={STEPS}", "trainer.max_epochs=null",
        "trainer.batch_size=4", "trainer.grad_accum=1", "trainer.eval_every=null", "trainer.log_every=1",
        f"output_dir={out}",
    ]


def _torch_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _run(out) -> dict:
    result = run_cli("finetune", *_overrides(out))
    assert result.code == 0, result.err[-3000:]
    losses = {r["step"]: r["loss"] for r in read_log(out) if r["type"] == "train"}
    return {"losses": losses, "weights": load_file(out / "final" / "model.safetensors")}


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    return _run(tmp_path_factory.mktemp("golden-a") / "run")


def test_losses_match_the_golden_file(first):
    losses = first["losses"]
    assert sorted(losses) == list(range(1, STEPS + 1))
    if os.environ.get("LLMTUNE_REGEN_GOLDEN"):
        import transformers

        GOLDEN.write_text(json.dumps({
            "about": "per-step training losses of the pinned run in tests/unit/test_golden.py",
            "torch": _torch_minor(torch.__version__),
            "torch_full": torch.__version__,
            "transformers": transformers.__version__,
            "overrides": [o.replace(str(ASSETS) + "/", "tests/assets/") for o in _overrides("<tmp>")],
            "losses": {str(k): v for k, v in sorted(losses.items())},
        }, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    if golden["torch"] != _torch_minor(torch.__version__):
        pytest.skip(f"{GOLDEN.name} was made with torch {golden['torch']}, this is torch {torch.__version__}: "
                    "floating-point results may differ; regenerate it with LLMTUNE_REGEN_GOLDEN=1")
    expected = {int(k): v for k, v in golden["losses"].items()}
    assert sorted(expected) == sorted(losses)
    for step, value in expected.items():
        assert abs(losses[step] - value) < TOL, (step, losses[step], value)


@pytest.mark.slow
def test_two_identical_runs_are_bitwise_equal(first, tmp_path):
    second = _run(tmp_path / "run")
    assert second["losses"] == first["losses"]  # exact float equality
    assert second["weights"].keys() == first["weights"].keys()
    for name, tensor in first["weights"].items():
        assert torch.equal(second["weights"][name], tensor), name
