"""Sequence-to-sequence tasks in process: the metric wrappers, loss masking, columns, the
built-in data, and the predictions seam (EvalContext -> predictions/<split>.jsonl)."""

from __future__ import annotations

import json
import math

import pytest
from datasets import Dataset, DatasetDict, DatasetInfo

from llmtune.data.builtin import builtin_splits
from llmtune.errors import UserError
from llmtune.tasks import seq2seq_metrics
from llmtune.tasks.base import IGNORE_INDEX, EvalContext
from llmtune.tasks.seq2seq import SummarizationTask, TranslationTask


def _split(rows: list[dict], name: str = "data.train_file: /x.jsonl") -> Dataset:
    return Dataset.from_list(rows, info=DatasetInfo(description=name))


class _PlainTokenizer:
    """Enough of a tokenizer for the prompt's text: no chat template, no BOS; ids are characters."""

    chat_template = None
    bos_token = None

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": texts}


# ------------------------------------------------------------------ metrics
def test_rouge_is_100_for_a_copy_0_for_disjoint_text_and_stems_words():
    same = seq2seq_metrics.rouge(["Rovers beat United 2-1."], ["Rovers beat United 2-1."])
    assert same["rougeL"] == pytest.approx(100) and same["rouge2"] == pytest.approx(100)
    assert seq2seq_metrics.rouge(["alpha beta"], ["gamma delta"])["rouge1"] == 0
    # The Porter stemmer: "trains" and "train" are one word.
    assert seq2seq_metrics.rouge(["the trains"], ["the train"])["rouge1"] == pytest.approx(100)


def test_rouge_stderr_is_the_spread_of_per_example_scores():
    scores = seq2seq_metrics.rouge(["a b", "x y"], ["a b", "a b"])  # 100 and 0
    assert scores["rougeL"] == pytest.approx(50)
    assert scores["rougeL_stderr"] == pytest.approx(math.sqrt(((50**2) * 2 / 1) / 2))


def test_rouge_lsum_reads_sentences_and_equals_rouge_l_on_one_sentence():
    one = seq2seq_metrics.rouge(["the cat sat"], ["the cat sat down"])
    assert one["rougeLsum"] == pytest.approx(one["rougeL"])
    # Two sentences in swapped order: L's single longest sequence covers one, Lsum's union both.
    two = seq2seq_metrics.rouge(["b c d. a x y."], ["a x y. b c d."])
    assert two["rougeLsum"] > two["rougeL"]


def test_bleu_and_chrf_from_sacrebleu_with_a_bootstrap_stderr():
    refs = ["the cat sat on the mat .", "a dog ran in the park today ."]
    perfect = seq2seq_metrics.bleu_chrf(refs, refs)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    hyps = ["the cat sat on a mat .", "a dog walked in the park ."]
    partial = seq2seq_metrics.bleu_chrf(hyps, refs)
    assert 0 < partial["bleu"] < 100 and 0 < partial["chrf"] < 100
    assert partial["bleu_stderr"] > 0
    assert seq2seq_metrics.bleu_chrf(hyps, refs) == partial  # the bootstrap is seeded


# ------------------------------------------------------------------ tokenizing and masking
def test_decoder_only_loss_covers_the_target_and_its_eos_only(gpt_tok):
    task = TranslationTask(architecture="decoder", max_length=64, max_target_length=16)
    raw = DatasetDict({"train": _split([{"source": "The model trains on text", "target": "and data"}])})
    row = task.preprocess(raw, gpt_tok)["train"][0]
    ids, labels = row["input_ids"], row["labels"]
    target = gpt_tok("and data", add_special_tokens=False)["input_ids"] + [gpt_tok.eos_token_id]
    learned = [label for label in labels if label != IGNORE_INDEX]
    assert learned == target                       # exactly the target and EOS, nothing of the prompt
    assert ids[-len(target):] == target
    first = labels.index(target[0])
    assert ids[first + 1] == target[0]             # labels are shifted: position t predicts t+1
    assert labels[-1] == IGNORE_INDEX


def test_decoder_only_cuts_the_source_never_the_target(gpt_tok):
    task = TranslationTask(architecture="decoder", max_length=96, max_target_length=32)
    long_source = " ".join(["token"] * 200)
    row = task.preprocess(DatasetDict({"train": _split([{"source": long_source, "target": "short answer"}])}), gpt_tok)["train"][0]
    assert len(row["input_ids"]) == 96
    target = gpt_tok("short answer", add_special_tokens=False)["input_ids"] + [gpt_tok.eos_token_id]
    assert [label for label in row["labels"] if label != IGNORE_INDEX] == target


def test_encoder_decoder_targets_end_with_the_end_token_and_fit(bert_tok, gpt_tok):
    task = SummarizationTask(architecture="encoder_decoder", max_length=12, max_target_length=6)
    raw = DatasetDict({"train": _split([{"source": " ".join(["word"] * 40), "target": "one two three four five six seven"}])})
    for tok, end in ((bert_tok, bert_tok.sep_token_id), (gpt_tok, gpt_tok.eos_token_id)):  # BERT: [SEP]; BPE: EOS appended
        row = task.preprocess(raw, tok)["train"][0]
        assert len(row["input_ids"]) == 12 and len(row["labels"]) == 6
        assert row["labels"][-1] == end
        assert row["example"] == 0


def test_packing_packs_training_rows_only(gpt_tok):
    task = TranslationTask(architecture="decoder", max_length=128, packing=True)
    rows = [{"source": f"sentence {i}", "target": f"zin {i}"} for i in range(8)]
    data = task.preprocess(DatasetDict({"train": _split(rows), "validation": _split(rows)}), gpt_tok)
    assert len(data["train"]) < 8 and "position_ids" in data["train"].column_names
    assert len(data["validation"]) == 8 and data["validation"]["example"] == list(range(8))  # one sample a row, for generation


def test_packing_is_refused_for_an_encoder_decoder():
    task = TranslationTask(architecture="encoder_decoder", packing=True)
    with pytest.raises(UserError, match="task.packing=true.*encoder-decoder.*task.packing=false"):
        task.setup(DatasetDict({"train": _split([{"source": "a", "target": "b"}])}))


# ------------------------------------------------------------------ columns and settings
def test_translation_column_is_read_with_source_and_target_lang():
    rows = [{"translation": {"de": "Hallo Welt", "en": "Hello world"}}]
    task = TranslationTask(source_lang="en", target_lang="de")
    assert task._pairs(_split(rows)) == (["Hello world"], ["Hallo Welt"])
    before, _ = task._prompt_parts(_PlainTokenizer())
    assert "Translate from en to de." in before
    with pytest.raises(UserError, match="holds \\{lang: text\\} objects in de, en; set task.source_lang and task.target_lang"):
        TranslationTask()._pairs(_split(rows))


def test_missing_columns_and_empty_rows_are_one_line_errors():
    with pytest.raises(UserError, match="needs 'source' and 'target' columns.*found: document, summary.*data.columns="):
        SummarizationTask().setup(DatasetDict({"train": _split([{"document": "a", "summary": "b"}])}))
    with pytest.raises(UserError, match="/x.jsonl row 2: the target must be non-empty text"):
        SummarizationTask().setup(DatasetDict({"train": _split([{"source": "a", "target": "b"}, {"source": "c", "target": " "}])}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"architecture": "rnn"}, "task.architecture=rnn"),
    ({"generation": {"num_beam": 4}}, "task.generation.num_beam: not a generation setting"),
    ({"generation": {"num_beams": 0}}, "num_beams=0: must be a whole number, 1 or more"),
    ({"prompt": "Summarize."}, "must contain \\{source\\} exactly once"),
    ({"prompt": "{text}"}, "cannot be filled in"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        SummarizationTask(**kwargs)


def test_architecture_auto_follows_the_model():
    assert SummarizationTask(model_type="t5").auto_class == "AutoModelForSeq2SeqLM"
    assert SummarizationTask(model_type="t5").peft_task_type == "SEQ_2_SEQ_LM"
    assert SummarizationTask(model_type="llama").auto_class == "AutoModelForCausalLM"
    assert SummarizationTask(model_name_or_path="x", decoder_name_or_path="y").auto_class == "AutoModelForSeq2SeqLM"
    saved = SummarizationTask(model_type="t5")
    loaded = SummarizationTask(model_type="llama")
    loaded.load_state(saved.state())          # a trained run keeps the architecture it was trained with
    assert loaded.auto_class == "AutoModelForSeq2SeqLM"


# ------------------------------------------------------------------ built-in data
@pytest.mark.parametrize("kind", ["summarization", "translation"])
def test_builtin_data_is_deterministic_and_well_formed(kind):
    data = builtin_splits(kind)
    assert data == builtin_splits(kind)
    assert {len(rows) for rows in data.values()} == {2000, 300}
    assert all(row["source"].strip() and row["target"].strip() for rows in data.values() for row in rows)


def test_copying_the_source_scores_poorly_on_the_builtin_data():
    translation = builtin_splits("translation")["test"]
    sources, targets = [r["source"] for r in translation], [r["target"] for r in translation]
    assert seq2seq_metrics.bleu_chrf(sources, targets)["bleu"] < 2
    summaries = builtin_splits("summarization")["test"]
    copy = seq2seq_metrics.rouge([r["source"] for r in summaries], [r["target"] for r in summaries])
    assert copy["rougeL"] < 30


# ------------------------------------------------------------------ the predictions seam
def test_reported_predictions_are_taken_once_and_written_whole(tmp_path, caplog):
    from accelerate import Accelerator

    from llmtune.engine import predictions

    ctx = EvalContext(accelerator=Accelerator(cpu=True))
    assert ctx.take_predictions() == (None, 3)
    rows = [{"source": f"s{i}", "reference": f"r{i}", "prediction": f"p{i}"} for i in range(5)]
    ctx.report_predictions(rows, show=2)
    path = tmp_path / "predictions" / "validation.jsonl"
    with caplog.at_level("INFO", logger="llmtune"):
        assert predictions.hand_over(ctx, "validation", path, is_main=True) == path
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    assert "validation sample 2: source: s1 -> reference: r1 -> prediction: p1" in caplog.text
    assert "sample 3" not in caplog.text
    assert predictions.hand_over(ctx, "validation", path, is_main=True) is None  # taken: the next evaluation starts empty
