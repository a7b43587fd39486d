"""`llmtune inspect`: the data as training sees it, counted against the data files by hand, and
the steps per epoch against what a training run with the same overrides does."""

from __future__ import annotations

import json
import re
from collections import Counter

from conftest import ASSETS, FIXED_TOKENIZER, cls_args, lm_args, ner_args, read_log, run_cli


def conll_sentences(path) -> list[list[tuple[str, str]]]:
    sentences, current = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            word, *_, tag = line.split()
            current.append((word, tag))
        elif current:
            sentences, current = [*sentences, current], []
    return sentences + ([current] if current else [])


def assert_png(path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100


def number(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return match.group(1)


def test_ner_examples_labels_batching_time_and_png(tmp_path):
    out, png = tmp_path / "run", tmp_path / "hist" / "lengths.png"
    args = [*ner_args(out), f"model.tokenizer={FIXED_TOKENIZER}"]
    result = run_cli("inspect", *args, "inspect.n=2", "inspect.steps=1", f"inspect.png={png}")
    assert result.code == 0, result.text
    text = result.out
    sentences = conll_sentences(ASSETS / "ner_train.conll")

    # The first two examples, token by token with their tags; no third.
    assert "example 0:" in text and "example 1:" in text and "example 2:" not in text
    first = text.split("example 0:")[1].split("example 1:")[0]
    # One tag per word, on its first subword, in order (the other subwords are ignored: no tag).
    assert re.findall(r"\S/([BIO](?:-[A-Z]+)?)(?=\s)", first) == [tag for _, tag in sentences[0]]
    assert f"{sentences[0][0][0][:2]}" in first
    assert "[CLS]" in text and "[SEP]" in text  # specials shown (dimmed: ignored)

    # Label balance: one labelled token per word (max_length 128 cuts nothing here).
    tags = Counter(tag for sentence in sentences for _, tag in sentence)
    assert number(r"truncated: (\d+) of", text) == "0"
    for tag, count in tags.items():
        assert re.search(rf"^{re.escape(tag)}\s+{count}\s+", text, re.M), f"{tag} {count} not in:\n{text}"

    # Steps per epoch: what one training epoch with the same overrides takes.
    shown = int(number(r"steps per epoch: (\d+)", text))
    padding = float(number(r"padding: ([\d.]+)% of \d+ padded tokens", text))
    assert 0 <= padding < 100
    assert float(number(r"time per step: ([\d.]+) s", text)) > 0
    assert "time per epoch: ~" in text
    assert_png(png)
    assert not out.exists()  # inspect writes no run directory

    train = run_cli(*args, "trainer.max_steps=null", "trainer.max_epochs=1", "trainer.eval_every=null")
    assert train.code == 0, train.text
    assert max(r["step"] for r in read_log(out) if "step" in r) == shown


def test_classification_truncation_and_labels_counted_by_hand(tmp_path):
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in (ASSETS / "cls_train.jsonl").read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(str(FIXED_TOKENIZER))
    lengths = sorted(len(tokenizer(row["text"])["input_ids"]) for row in rows)
    max_length = lengths[len(lengths) // 2]
    cut = sum(length > max_length for length in lengths)
    assert 0 < cut < len(rows)  # the check below could fail both ways

    out, png = tmp_path / "run", tmp_path / "cls.png"
    result = run_cli("inspect", *cls_args(out), f"model.tokenizer={FIXED_TOKENIZER}", f"task.max_length={max_length}",
                     "inspect.n=1", "inspect.steps=1", f"inspect.png={png}")
    assert result.code == 0, result.text
    text = result.out
    assert f"truncated: {cut} of {len(rows)} examples" in text
    assert number(r"example 0: \d+ tokens, label (\S+)", text) == rows[0]["label"]
    for label, count in Counter(row["label"] for row in rows).items():
        assert re.search(rf"^{label}\s+{count}\s+", text, re.M), text
    assert "time per step:" in text
    assert_png(png)
    assert not out.exists()


def test_clm_without_timing_or_png(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default PNG path is relative: none must appear
    out = tmp_path / "run"
    result = run_cli("inspect", *lm_args("clm", out), "inspect.n=1", "inspect.steps=0", "inspect.png=none")
    assert result.code == 0, result.text
    assert "example 0: 32 tokens" in result.out
    assert "→" in result.out  # each token with the next token it predicts
    assert "truncated: none" in result.out
    assert "steps per epoch:" in result.out
    assert "time per step" not in result.out and "parameters:" not in result.text  # no model loaded
    assert list(tmp_path.iterdir()) == []


def test_bad_overrides_are_one_line(tmp_path):
    out = tmp_path / "run"
    for typo in ("trainer.batch_sise=4", "inspect.nn=2"):
        result = run_cli("inspect", *ner_args(out), typo)
        assert result.code == 2, result.text
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert typo.split("=")[0] in result.err
    sweep = run_cli("inspect", *ner_args(out), "optimizer.lr=1e-4,3e-4")
    assert sweep.code == 2 and "sweep" in sweep.err
    assert not out.exists()


def test_a_task_whose_labels_are_not_one_per_token_shows_them_whole(tmp_path):
    # QA labels are the answer's start and end positions, not a label per token.
    out = tmp_path / "run"
    result = run_cli("inspect", "finetune", "task=qa", "model=tiny_bert", "data.max_train_samples=16", "task.max_length=160",
                     f"output_dir={out}", "inspect.n=1", "inspect.steps=0", "inspect.png=none")
    assert result.code == 0, result.text[-2000:]
    line = next(ln for ln in result.out.splitlines() if ln.startswith("example 0:"))
    start, end = (int(v) for v in line.split("[", 1)[1].rstrip("]").split(","))
    assert 0 <= start <= end < 160  # positions inside the window (0, 0: no answer in it)
