"""A pretraining run's final/ folder is a model name for fine-tuning (model and tokenizer)."""

from __future__ import annotations

import json

from conftest import lm_args, ner_args, run_cli


def test_pretrained_mlm_final_folder_finetunes_ner(tmp_path):
    pre = tmp_path / "pre"
    assert run_cli(*lm_args("mlm", pre, steps=2)).code == 0
    final = pre / "final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()

    tuned = tmp_path / "tuned"
    args = [a for a in ner_args(tuned, steps=2) if not a.startswith("model=")]
    result = run_cli(*args, f"model.name_or_path={final}")
    assert result.code == 0, result.err[-2000:]
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["main_metric"] == "f1" and "f1" in metrics["validation"]
    # The fine-tuned model kept the pretrained vocabulary (no new tokenizer was trained).
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tuned / "final").get_vocab() == AutoTokenizer.from_pretrained(final).get_vocab()
