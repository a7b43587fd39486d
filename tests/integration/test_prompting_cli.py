"""`llmtune evaluate prompting=...` end to end, one run per mode with tiny models (random
weights: the numbers are not the point, the plumbing and the report are), and its refusals."""

from __future__ import annotations

import json

import pytest

from conftest import ASSETS

CLS = [f"data.train_file={ASSETS / 'cls_train.jsonl'}", f"data.validation_file={ASSETS / 'cls_dev.jsonl'}"]
NER = [f"data.train_file={ASSETS / 'ner_train.conll'}", f"data.validation_file={ASSETS / 'ner_dev.conll'}"]


def _report(cli, tmp_path, *args) -> dict:
    out = tmp_path / "metrics.json"
    result = cli("evaluate", *args, f"output={out}")
    assert result.code == 0, result.text
    report = json.loads(out.read_text())
    assert report["kind"] == "prompting" and "metrics:" in result.out
    return report


def test_zero_shot_classification_scores_the_file_alone(cli, tmp_path):
    # No training file: the labels come from the scored file, as the design's example runs.
    report = _report(cli, tmp_path, "prompting=zero_shot", "model=tiny_llama", "task=classification", f"data.validation_file={ASSETS / 'cls_dev.jsonl'}")
    metrics = report["validation"]
    assert report["examples"] == 16 and report["prompting"]["k"] == 0 and len(report["per_seed"]) == 1
    assert round(metrics["accuracy"] * 16, 6).is_integer() and 0 <= metrics["macro_f1"] <= 1


def test_few_shot_ner_over_two_seeds_reports_mean_and_std(cli, tmp_path):
    report = _report(cli, tmp_path, "prompting=few_shot", "prompting.k=2", "prompting.seeds=[0,1]", "max_new_tokens=4",
                     "model=tiny_llama", "task=ner", "task.max_length=64", *NER)
    metrics, seeds = report["validation"], report["per_seed"]
    assert report["prompting"]["seeds"] == [0, 1] and len(seeds) == 2
    assert metrics["f1"] == pytest.approx((seeds[0]["f1"] + seeds[1]["f1"]) / 2) and "f1_std" in metrics


def test_cloze_with_few_shot_finetuning_on_tiny_bert(cli, tmp_path):
    report = _report(cli, tmp_path, "prompting=cloze", "prompting.k=4", "prompting.finetune_steps=2", "prompting.seeds=[3,4]",
                     "model=tiny_bert", "task=classification", *CLS)
    assert report["prompting"]["finetune_steps"] == 2 and len(report["per_seed"]) == 2
    assert "accuracy_std" in report["validation"]


@pytest.mark.parametrize("args, message", [
    (["prompting=cloze", "task=ner", "model=tiny_bert", *NER], "prompting=cloze is not available for task=ner; it offers prompting=zero_shot|few_shot"),
    (["prompting=few_shot", "task=classification", "model=tiny_llama", f"data.validation_file={ASSETS / 'cls_dev.jsonl'}"],
     "draws its demonstrations from a training split; give data.train_file=FILE"),
    (["prompting=zero_shot", "prompting.k=3", "model=tiny_llama", *CLS], "prompting.k=3 needs prompting=few_shot"),
    (["prompting=zero_shot", "prompting.verbalizr={a: b}", *CLS], "unknown argument 'prompting.verbalizr'.*prompting.verbalizer"),
    (["prompting=zero_shot", "task=sft", "model=tiny_llama"], "it has no prompting baseline"),
])
def test_refusals_are_one_line(cli, args, message):
    import re

    result = cli("evaluate", *args)
    assert result.code == 2 and re.search(message, result.err), result.text
    assert "Traceback" not in result.text


@pytest.mark.slow
def test_a_trained_final_is_prompted_and_a_classifier_is_refused(cli, tmp_path):
    from conftest import cls_args

    sft = tmp_path / "sft"
    result = cli("finetune", "task=sft", "model=tiny_llama", "peft=lora", "data.max_train_samples=16", "data.max_eval_samples=4",
                 "task.max_length=64", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_every=null", f"output_dir={sft}")
    assert result.code == 0, result.err[-2000:]
    report = _report(cli, tmp_path, str(sft / "final"), "prompting=zero_shot", "task=classification", *CLS)
    assert report["model"] == str(sft / "final") and report["examples"] == 16
    assert cli(*cls_args(tmp_path / "cls", steps=2)).code == 0
    refused = cli("evaluate", str(tmp_path / "cls" / "final"), "prompting=zero_shot", "task=classification", *CLS)
    assert refused.code == 2 and "this prompting mode needs a CausalLM model" in refused.err
