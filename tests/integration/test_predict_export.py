"""`llmtune predict` and `llmtune export` on tiny trained runs, through the real CLI.

- predict: every task gives its prediction (ner entities whose offsets slice the input, class
  probabilities summing to 1, mlm top-k fills, greedy generation that repeats exactly), from a
  final/ of each PEFT method and from a checkpoint, in input order whatever the batching; .txt,
  .jsonl and stdin read alike; a bad line or an unknown param is one line and writes nothing.
- export: the folder loads with plain transformers (Auto class and pipeline) and predicts what
  `llmtune predict` does; merged LoRA equals the adapter; dtype=bf16 writes bf16 weights; a
  non-empty or overlapping output is refused.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import SFT_SAMPLES, cls_args, lm_args, ner_args, run_cli

# Varied lengths, not in length order: a length-sorted batch plan reorders them.
NER_TEXTS = [
    "Anna Berg lives in Oslo.",
    "Tom",
    "The train from Leeds to York was late, and Sara Lund joined Bluepoint in Paris last year.",
    "Greenleaf Bank",
    "Sara works for Bluepoint in New York.",
    "Tom works for Greenleaf Bank in Leeds.",
]
CLS_TEXTS = ["The actors were wonderful.", "A tired script with no real surprises at all, and the pizza was burnt.", "Fun!"]


def _train(tmp_path_factory, name: str, args: list[str]) -> Path:
    """Train once per module; "OUT" in `args` becomes the run directory."""
    out = tmp_path_factory.mktemp(name) / "run"
    result = run_cli(*[a.replace("OUT", str(out)) for a in args])
    assert result.code == 0, result.err[-3000:]
    return out


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    return _train(tmp_path_factory, "ner", ner_args(Path("OUT")))


@pytest.fixture(scope="module")
def ner_lora(tmp_path_factory):
    return _train(tmp_path_factory, "ner-lora", [*ner_args(Path("OUT")), "peft=lora"])


@pytest.fixture(scope="module")
def ner_bitfit(tmp_path_factory):
    return _train(tmp_path_factory, "ner-bitfit", [*ner_args(Path("OUT")), "peft=bitfit"])


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    return _train(tmp_path_factory, "cls", cls_args(Path("OUT")))


@pytest.fixture(scope="module")
def cls_lora(tmp_path_factory):
    return _train(tmp_path_factory, "cls-lora", [*cls_args(Path("OUT")), "peft=lora"])


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory):
    data = tmp_path_factory.mktemp("sft-data") / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT_SAMPLES * 2))
    return _train(tmp_path_factory, "sft-lora", [
        "finetune", "task=sft", "model=tiny_llama", "task.max_length=128", f"data.train_file={data}", "data.validation_split=0.25",
        "trainer.max_steps=2", "trainer.max_epochs=null", "trainer.batch_size=2", "trainer.eval_every=null", "peft=lora", "output_dir=OUT",
    ])


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def predict(path: Path, source: Path, *extra: str) -> list[dict]:
    """`llmtune predict PATH input=SOURCE output=...`: the output lines, parsed."""
    out = source.with_name(source.name + ".out.jsonl")
    result = run_cli("predict", path, f"input={source}", f"output={out}", *extra)
    assert result.code == 0, result.err[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def error_line(result) -> str:
    """The one error line of a refused command (other stderr lines are log records)."""
    assert result.code == 2, result.text[-2000:]
    lines = [line for line in result.err.splitlines() if line.startswith("llmtune: error")]
    assert len(lines) == 1, result.err
    return lines[0]


# ---------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("which", ["ner_run", "ner_lora", "ner_bitfit", "checkpoint"])
def test_ner_entities_slice_the_input_in_input_order(which, request, tmp_path):
    run = request.getfixturevalue("ner_run" if which == "checkpoint" else which)
    path = run / "checkpoints" / "step-2" if which == "checkpoint" else run / "final"
    items = [*NER_TEXTS[:-1], {"text": NER_TEXTS[-1]}]
    out = predict(path, write_jsonl(tmp_path / "in.jsonl", items), "batch_size=2")
    assert [o["line"] for o in out] == list(range(1, len(items) + 1))
    labels = json.loads((run / "final" / "config.json").read_text())["id2label"].values()
    types = {label[2:] for label in labels if label != "O"}
    found = [(text, e) for text, o in zip(NER_TEXTS, out, strict=True) for e in o["entities"]]
    assert found, "the tiny model tagged nothing: the offsets are not checked"
    for text, entity in found:
        assert text[entity["start"]:entity["end"]] == entity["text"]
        assert entity["type"] in types and 0 < entity["score"] <= 1
    # Each input predicted alone (batches of one) gives the same thing: outputs are not
    # shuffled by the length-sorted batches of two.
    alone = predict(path, write_jsonl(tmp_path / "alone.jsonl", items), "batch_size=1")
    for a, b in zip(out, alone, strict=True):
        assert [(e["type"], e["start"], e["end"]) for e in a["entities"]] == [(e["type"], e["start"], e["end"]) for e in b["entities"]]
        assert [e["score"] for e in a["entities"]] == pytest.approx([e["score"] for e in b["entities"]], abs=1e-4)


def test_ner_tokens_input_offsets_refer_to_the_joined_words(ner_run, tmp_path):
    tokens = ["Tom", "works", "for", "Greenleaf", "Bank", "."]
    out = predict(ner_run / "final", write_jsonl(tmp_path / "in.jsonl", [{"tokens": tokens}]))
    text = " ".join(tokens)
    for entity in out[0]["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"]


def test_txt_jsonl_and_stdin_give_the_same_predictions(ner_run, tmp_path, monkeypatch):
    txt = tmp_path / "in.txt"
    txt.write_text(NER_TEXTS[0] + "\n\n" + "\n".join(NER_TEXTS[1:]) + "\n")  # a blank line: skipped
    from_txt = predict(ner_run / "final", txt)
    from_jsonl = predict(ner_run / "final", write_jsonl(tmp_path / "in.jsonl", NER_TEXTS))
    assert [o["line"] for o in from_txt] == [1, *range(3, len(NER_TEXTS) + 2)]  # numbers of the input lines
    assert [o["entities"] for o in from_txt] == [o["entities"] for o in from_jsonl]
    for stdin, fmt in ((txt.read_text(), []), ("".join(json.dumps({"text": t}) + "\n" for t in NER_TEXTS), []),
                       ("".join(json.dumps(t) + "\n" for t in NER_TEXTS), ["format=jsonl"])):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        result = run_cli("predict", ner_run / "final", "input=-", *fmt)  # output=- (stdout)
        assert result.code == 0, result.err[-2000:]
        assert [json.loads(line)["entities"] for line in result.out.splitlines()] == [o["entities"] for o in from_jsonl]


def test_classification_label_and_probabilities(cls_run, cls_lora, tmp_path):
    items = [*CLS_TEXTS, {"text": "Tasty food.", "text_pair": "A cosy little dining room."}]
    for run in (cls_run, cls_lora):
        out = predict(run / "final", write_jsonl(tmp_path / "in.jsonl", items), "batch_size=2")
        assert len(out) == len(items)
        for o in out:
            assert set(o["probabilities"]) == {"neg", "pos"}
            assert sum(o["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)
            assert o["score"] == o["probabilities"][o["label"]]


def test_mlm_top_k_fills_each_mask(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*lm_args("mlm", run))
    assert result.code == 0, result.err[-3000:]
    texts = ["the [MASK] of the [MASK] module", "no mask here", "[MASK]"]
    out = predict(run / "final", write_jsonl(tmp_path / "in.jsonl", texts), "top_k=3")
    assert [len(o["masks"]) for o in out] == [2, 0, 1]
    for fills in (f for o in out for f in o["masks"]):
        scores = [f["score"] for f in fills]
        assert len(fills) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    unknown = run_cli("predict", run / "final", f"input={tmp_path / 'in.jsonl'}", "top_kk=3")
    assert "unknown argument 'top_kk'. Did you mean 'top_k'?" in error_line(unknown)
    assert "top_k=5" in error_line(unknown)
    bad_type = run_cli("predict", run / "final", f"input={tmp_path / 'in.jsonl'}", "top_k=many")
    assert "top_k='many': expected an integer" in error_line(bad_type)


def test_clm_greedy_generation_repeats(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*lm_args("clm", run))
    assert result.code == 0, result.err[-3000:]
    source = write_jsonl(tmp_path / "in.jsonl", ["The module", "A much longer prompt about the help topics of Python", "x"])
    first = predict(run / "final", source, "max_new_tokens=5", "temperature=0")
    again = predict(run / "final", source, "max_new_tokens=5", "batch_size=1")
    assert first == again and all(isinstance(o["generated"], str) for o in first)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "final")
    assert all(len(tok(o["generated"], add_special_tokens=False)["input_ids"]) <= 6 for o in first)
    out = tmp_path / "none.jsonl"
    for bad, said in (("max_new_tokens=0", "must be 1 or more"), ("temperature=-1", "must be 0 or more"), ("top_p=1.5", "at most 1")):
        assert said in error_line(run_cli("predict", run / "final", f"input={source}", f"output={out}", bad))
        assert not out.exists()


def test_sft_lora_generation_from_prompts_and_chats(sft_lora, tmp_path):
    items = ["What is 2 plus 3?", {"prompt": "Name the capital city of Peru."},
             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 1 plus 1?"}]}]
    source = write_jsonl(tmp_path / "in.jsonl", items)
    first = predict(sft_lora / "final", source, "max_new_tokens=4")
    assert first == predict(sft_lora / "final", source, "max_new_tokens=4", "batch_size=1")
    assert len(first) == 3 and all(isinstance(o["generated"], str) for o in first)


def test_a_bad_line_writes_nothing(ner_run, tmp_path):
    out = tmp_path / "preds.jsonl"
    source = tmp_path / "new.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in NER_TEXTS * 20) + '{"text": "cut off\n')
    result = run_cli("predict", ner_run / "final", f"input={source}", f"output={out}")
    line = error_line(result)
    assert f"{source} line {len(NER_TEXTS) * 20 + 1}: not valid JSON" in line
    assert result.err.strip() == line  # refused before the model loaded: nothing else was said
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    # A line that is JSON but not an input of the task: the task's message, with file and line.
    source.write_text('"fine"\n42\n')
    line = error_line(run_cli("predict", ner_run / "final", f"input={source}", f"output={out}"))
    assert f"{source} line 2: expected a text" in line
    assert not out.exists()


def test_a_failed_run_leaves_no_partial_output(ner_run, tmp_path, monkeypatch):
    from llmtune.tasks.ner import NERTask

    out = tmp_path / "preds.jsonl"
    out.write_text("kept\n")
    real, calls = NERTask.predict, []

    def failing(self, model, rows, ctx):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(self, model, rows, ctx)

    monkeypatch.setattr(NERTask, "predict", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_cli("predict", ner_run / "final", f"input={write_jsonl(tmp_path / 'in.jsonl', NER_TEXTS)}", f"output={out}", "batch_size=1")
    assert out.read_text() == "kept\n"  # the old file stays until a complete one replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "preds.jsonl"]


def test_predict_argument_errors_are_one_line(ner_run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", NER_TEXTS)
    assert "params of task=ner: none" in error_line(run_cli("predict", ner_run / "final", f"input={source}", "top_k=3"))
    assert "Did you mean 'batch_size'?" in error_line(run_cli("predict", ner_run / "final", f"input={source}", "batch_sise=3"))
    assert "input=FILE is required" in error_line(run_cli("predict", ner_run / "final"))
    # A typo of one of the verb's own keys is named at once, not taken for a task param.
    assert "Did you mean 'input'?" in error_line(run_cli("predict", ner_run / "final", f"inptu={source}"))
    assert "no such file" in error_line(run_cli("predict", ner_run / "final", f"input={tmp_path / 'nope.jsonl'}"))
    csv = tmp_path / "in.csv"
    csv.write_text("a\n")
    assert "format=jsonl or format=txt" in error_line(run_cli("predict", ner_run / "final", f"input={csv}"))
    assert "is the input file" in error_line(run_cli("predict", ner_run / "final", f"input={source}", f"output={source}"))


# ---------------------------------------------------------------------------------- export
def export(path: Path, out: Path, *extra: str):
    result = run_cli("export", path, f"output={out}", *extra)
    assert result.code == 0, result.err[-3000:]
    return result


@pytest.mark.parametrize("which", ["ner_run", "ner_lora"])
def test_ner_export_loads_with_transformers_and_predicts_the_same(which, request, tmp_path):
    from transformers import AutoModelForTokenClassification, pipeline

    run = request.getfixturevalue(which)
    out = tmp_path / "export"
    export(run / "final", out)
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForTokenClassification.from_pretrained(out)
    labels = json.loads((run / "final" / "llmtune.json").read_text())["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    ours = predict(run / "final", write_jsonl(tmp_path / "in.jsonl", NER_TEXTS))
    theirs = pipeline("token-classification", model=str(out), aggregation_strategy="first")(NER_TEXTS)
    assert any(o["entities"] for o in ours)
    for o, t in zip(ours, theirs, strict=True):
        assert [(e["type"], e["start"], e["end"]) for e in o["entities"]] == [(e["entity_group"], e["start"], e["end"]) for e in t]
        assert [e["score"] for e in o["entities"]] == pytest.approx([float(e["score"]) for e in t], abs=1e-5)
    # llmtune.json went along: llmtune's own verbs take the export as a (full) model.
    assert predict(out, write_jsonl(tmp_path / "again.jsonl", NER_TEXTS)) == ours


@pytest.mark.parametrize("which", ["cls_run", "cls_lora"])
def test_classification_export_matches_the_pipeline(which, request, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    run = request.getfixturevalue(which)
    out = tmp_path / "export"
    export(run / "final", out)
    assert set(AutoModelForSequenceClassification.from_pretrained(out).config.label2id) == {"neg", "pos"}
    ours = predict(run / "final", write_jsonl(tmp_path / "in.jsonl", CLS_TEXTS))
    theirs = pipeline("text-classification", model=str(out), top_k=None)(CLS_TEXTS)
    for o, t in zip(ours, theirs, strict=True):
        assert o["label"] == max(t, key=lambda s: s["score"])["label"]
        assert o["probabilities"] == pytest.approx({s["label"]: s["score"] for s in t}, abs=1e-5)


def test_merged_lora_equals_the_adapter(ner_lora, tmp_path):
    from transformers import AutoModelForTokenClassification

    from llmtune.trained import load_trained

    out = tmp_path / "export"
    export(ner_lora / "final", out)
    trained = load_trained(ner_lora / "final")
    assert hasattr(trained.model, "peft_config")  # really the unmerged adapter
    batch = trained.tokenizer(NER_TEXTS, padding=True, return_tensors="pt")
    merged = AutoModelForTokenClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, trained.model(**batch).logits, atol=1e-5, rtol=0)


def test_adapter_export_without_merge_and_bf16(ner_lora, ner_run, tmp_path):
    from safetensors import safe_open

    adapter = tmp_path / "adapter"
    result = export(ner_lora / "final", adapter, "merge=false")
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    assert "not merged" in result.out and "built from scratch" in result.out
    source = write_jsonl(tmp_path / "in.jsonl", NER_TEXTS)
    assert predict(adapter, source) == predict(ner_lora / "final", source)
    for run, name, out in ((ner_run, "model.safetensors", tmp_path / "bf16"), (ner_lora, "model.safetensors", tmp_path / "bf16-lora")):
        export(run / "final", out, "dtype=bf16")
        with safe_open(out / name, "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_export_of_a_checkpoint_has_the_label_maps(ner_run, tmp_path):
    from transformers import AutoModelForTokenClassification

    out = tmp_path / "export"
    export(ner_run / "checkpoints" / "step-2", out)
    labels = json.loads((ner_run / "final" / "llmtune.json").read_text())["labels"]
    assert sorted(AutoModelForTokenClassification.from_pretrained(out).config.label2id) == sorted(labels)


def test_sft_lora_export_generates_the_same(sft_lora, tmp_path):
    out = tmp_path / "export"
    export(sft_lora / "final", out)
    source = write_jsonl(tmp_path / "in.jsonl", [s["prompt"] for s in SFT_SAMPLES[:3]])
    assert predict(out, source, "max_new_tokens=4") == predict(sft_lora / "final", source, "max_new_tokens=4")


def test_export_refuses_a_used_or_overlapping_output(ner_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert "exists and is not empty" in error_line(run_cli("export", ner_run / "final", f"output={out}"))
    assert (out / "mine.txt").read_text() == "keep"
    export(ner_run / "final", out, "overwrite=true")
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    before = sorted(p.name for p in (ner_run / "final").iterdir())
    for inside in (ner_run / "final", ner_run / "exported", ner_run.parent):
        assert "overlaps the run" in error_line(run_cli("export", ner_run / "final", f"output={inside}", "overwrite=true"))
    assert sorted(p.name for p in (ner_run / "final").iterdir()) == before
    assert "output=DIR is required" in error_line(run_cli("export", ner_run / "final"))
