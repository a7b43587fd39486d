"""Prompting baselines, piece by piece: verbalizer scoring on a model whose probabilities are
set by hand, demonstration sampling, parsing generated NER answers, cloze scoring on tiny_bert."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, DatasetDict

from conftest import ROOT, corpus_lines
from llmtune.errors import UserError
from llmtune.prompting import draw_demos, parse_mapping, parse_seeds
from llmtune.tasks import prompts
from llmtune.tasks.base import PromptSettings
from llmtune.tasks.classification import ClassificationTask
from llmtune.tasks.ner import entity_lines, entity_tags, parse_entity_lines

VOCAB = ["[UNK]", "[PAD]", ":", "Answer", "very", "good", "awful", "great", "the", "film"]


@pytest.fixture(scope="module")
def word_tok():
    """Whole words and punctuation, one token each (unknown words: [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


class Bigram(torch.nn.Module):
    """A causal LM whose next-token distribution depends on the current token only, with the
    probabilities given: {previous word: {next word: probability}} (the rest share what is left)."""

    def __init__(self, probs: dict[str, dict[str, float]]) -> None:
        super().__init__()
        table = torch.full((len(VOCAB), len(VOCAB)), 1e-6)
        for prev, nexts in probs.items():
            table[VOCAB.index(prev)] = (1 - sum(nexts.values())) / (len(VOCAB) - len(nexts))
            for word, p in nexts.items():
                table[VOCAB.index(prev), VOCAB.index(word)] = p
        self.logprobs = torch.nn.Parameter(table.log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logprobs[input_ids])


def _settings(**kw) -> PromptSettings:
    return PromptSettings(**{"batch_size": 3, **kw})


# ------------------------------------------------------------------ verbalizer scoring
def test_option_scores_are_length_normalised(word_tok):
    model = Bigram({":": {"very": 0.5, "awful": 0.3}, "very": {"good": 0.5}})
    scores = prompts.continuation_scores(model, word_tok, ["the film Answer:"], ["very good", "awful"], _settings(), chat=False)
    # "very good": log(.5 * .5) in total, log .5 per token; "awful": log .3 for its one token.
    assert scores[0].tolist() == pytest.approx([math.log(0.5), math.log(0.3)], abs=1e-5)
    assert scores.argmax().item() == 0  # the sum would have chosen "awful" (log .25 < log .3)
    # One-token options are read off the prompt's last position (one forward pass per prompt,
    # or per option of several tokens): the same numbers either way.
    single = prompts.continuation_scores(model, word_tok, ["the film Answer:", "film :"], ["awful", "very"], _settings(), chat=False)
    assert single.flatten().tolist() == pytest.approx([math.log(0.3), math.log(0.5)] * 2, abs=1e-5)
    mixed = prompts.continuation_scores(model, word_tok, ["film :"] * 2, ["awful", "very good", "very"], _settings(), chat=False)
    assert mixed.flatten().tolist() == pytest.approx([math.log(0.3), math.log(0.5), math.log(0.5)] * 2, abs=1e-5)


def _cls_task(labels=("neg", "pos")) -> ClassificationTask:
    task = ClassificationTask()
    task.setup(DatasetDict({"train": Dataset.from_list([{"text": "x", "label": label} for label in labels])}))
    return task


@pytest.mark.parametrize("likelier, expected", [("great", "pos"), ("awful", "neg")])
def test_the_label_whose_word_is_likelier_wins(word_tok, likelier, expected):
    other = {"great": "awful", "awful": "great"}[likelier]
    model = Bigram({":": {likelier: 0.6, other: 0.2}})
    settings = _settings(verbalizer={"pos": "great", "neg": "awful"})
    rows = [{"text": "the film", "label": "pos"}, {"text": "film", "label": "neg"}]
    predicted = _cls_task().prompt_predict(model, word_tok, rows, [], settings)
    assert predicted == [expected, expected]
    metrics = _cls_task().prompt_metrics(rows, predicted)
    assert metrics["accuracy"] == 0.5 and set(metrics) == {"accuracy", "accuracy_stderr", "macro_f1"}


def test_verbalizer_mistakes_are_one_line(word_tok):
    model = Bigram({})
    with pytest.raises(UserError, match="'positive' is not a label of this data"):
        _cls_task().prompt_predict(model, word_tok, [{"text": "x", "label": "pos"}], [], _settings(verbalizer={"positive": "great"}))
    with pytest.raises(UserError, match="two labels have the same word"):
        _cls_task().prompt_predict(model, word_tok, [{"text": "x", "label": "pos"}], [], _settings(verbalizer={"pos": "good", "neg": "good"}))
    with pytest.raises(UserError, match=r"prompting.template=.*cannot fill it.*\{text\}"):
        _cls_task().prompt_predict(model, word_tok, [{"text": "x", "label": "pos"}], [], _settings(template="{review}"))


def test_mapping_and_seed_arguments():
    assert parse_mapping("{pos: great, neg: awful}") == {"pos": "great", "neg": "awful"}
    assert parse_seeds("[0, 1,2]") == [0, 1, 2] and parse_seeds("3") == [3]
    for bad in ("[a, b]", "[1, 1]", ""):
        with pytest.raises(UserError, match="prompting.seeds"):
            parse_seeds(bad)
    with pytest.raises(UserError, match="prompting.verbalizer"):
        parse_mapping("[great, awful]")


# ------------------------------------------------------------------ demonstrations
def test_demonstrations_are_drawn_the_same_for_a_seed():
    pool = [{"text": f"t{i}", "label": "a"} for i in range(50)]
    first = draw_demos(pool, 4, seed=7)
    assert first == draw_demos(pool, 4, seed=7) and len(first) == 4 and len({d["text"] for d in first}) == 4
    assert [draw_demos(pool, 4, seed=s) for s in (0, 1, 2)] != [first] * 3  # other seeds, other rows
    with pytest.raises(UserError, match="prompting.k=51: the training split has only 50 rows"):
        draw_demos(pool, 51, seed=0)


def test_plain_and_chat_rendering(word_tok):
    plain = prompts.render(word_tok, [("q1", "a1")], "q2", chat=False)
    assert plain == "q1 a1\n\nq2"
    tok = copy.deepcopy(word_tok)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert prompts.render(tok, [("q1", "a1")], "q2", chat=True) == "<user>q1|<assistant>a1|<user>q2|<assistant>"


# ------------------------------------------------------------------ NER answers
TYPES = {"per": "PER", "person": "PER", "loc": "LOC", "org": "ORG"}


def test_ner_answers_are_parsed_past_junk_lines():
    answer = ("Sure! Here are the entities:\n- Nadia Ferreira | person\nMarseille | LOC\nfoo | planet\n"
              "2. Falconridge Airlines | ORG.\nnone\n\nText: the next example\nOmar | PER")
    found = parse_entity_lines(answer, TYPES)
    assert found == [("Nadia Ferreira", "PER"), ("Marseille", "LOC"), ("Falconridge Airlines", "ORG")]
    assert parse_entity_lines("none", TYPES) == [] and parse_entity_lines("", TYPES) == []


def test_parsed_entities_become_iob2_tags_over_the_words():
    tokens = ["Falconridge", "Airlines", "hired", "Nadia", "Ferreira", "in", "marseille", "and", "Marseille", "."]
    found = [("Nadia Ferreira", "PER"), ("Marseille", "LOC"), ("Marseille", "LOC"), ("Atlantis", "LOC"), ("falconridge airlines", "ORG")]
    assert entity_tags(tokens, found) == ["B-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O"]
    # Demonstrations show the gold entities the way the answer is parsed back.
    tags = ["B-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "O", "O", "B-LOC", "O"]
    lines = entity_lines(tokens, tags, {"PER": "person", "LOC": "LOC", "ORG": "ORG"})
    assert lines == "Falconridge Airlines | ORG\nNadia Ferreira | person\nMarseille | LOC"
    assert entity_tags(tokens, parse_entity_lines(lines, TYPES)) == tags


# ------------------------------------------------------------------ cloze (tiny_bert)
@pytest.fixture(scope="module")
def tiny_mlm():
    from omegaconf import OmegaConf

    from llmtune.models import load_model
    from llmtune.tasks.base import Task
    from llmtune.tokenization import train_tokenizer

    tok = train_tokenizer(corpus_lines(), decoder=False, vocab_size=200)
    kind = Task()
    kind.auto_class = "AutoModelForMaskedLM"
    torch.manual_seed(0)
    model = load_model(OmegaConf.load(ROOT / "conf" / "model" / "tiny_bert.yaml"), kind, tok, {})
    return model.eval(), tok


def _two_words(tok) -> list[str]:
    """Two single-token words of the tiny vocabulary."""
    words = [w for w in sorted(tok.get_vocab()) if w.isalpha() and w.islower() and len(w) > 2]
    return words[:2]


@pytest.mark.parametrize("favoured", [0, 1])
def test_cloze_scores_read_the_label_word_at_the_mask(tiny_mlm, favoured):
    model, tok = tiny_mlm
    words = _two_words(tok)
    head = model.cls.predictions
    bias = getattr(head, "bias", None)
    bias = bias if bias is not None else head.decoder.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[tok.convert_tokens_to_ids(words[favoured])] += 20.0
        rows = [{"text": line, "label": "b"} for line in corpus_lines()[:5]]
        task = _cls_task(("a", "b"))
        settings = _settings(mode="cloze", verbalizer={"a": words[0], "b": words[1]})
        assert task.prompt_predict(model, tok, rows, [], settings) == [["a", "b"][favoured]] * 5
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_cloze_puts_one_mask_per_word_piece_and_refuses_unknown_words(tiny_mlm):
    model, tok = tiny_mlm
    batch = prompts._cloze_batch(tok, ["a text"], "{text} It was {mask}.", 3, _settings())
    assert (batch["input_ids"] == tok.mask_token_id).sum() == 3
    with pytest.raises(UserError, match="'日本語' is not in the model's vocabulary"):
        prompts.cloze_scores(model, tok, ["a text"], ["日本語", "the"], "{text} {mask}", _settings())
    with pytest.raises(UserError, match="must hold \\{mask\\} once"):
        prompts.cloze_scores(model, tok, ["a text"], ["the", "and"], "{text} {mask} {mask}", _settings())


def test_cloze_finetuning_lowers_its_loss(tiny_mlm):
    model, tok = tiny_mlm
    model = copy.deepcopy(model)
    texts = corpus_lines()[:4]
    settings = _settings(mode="cloze", finetune_steps=8, lr=1e-2, batch_size=4)
    losses = prompts.cloze_finetune(model, tok, texts, [0, 1, 0, 1], _two_words(tok), "{text} It was {mask}.", settings)
    assert len(losses) == 8 and losses[-1] < losses[0]


# ------------------------------------------------------------------ generated answers (QA, seq2seq)
def _generating(monkeypatch, replies: list[str]) -> list[str]:
    """prompts.generate answers `replies`; returns the prompts it was given."""
    seen = []

    def generate(model, tokenizer, texts, settings, chat):
        seen.extend(texts)
        return replies[:len(texts)]

    monkeypatch.setattr(prompts, "generate", generate)
    return seen


PLAIN = SimpleNamespace(chat_template=None)  # a tokenizer without a chat template: plain prompts


def test_qa_replies_are_scored_as_squad_answers(monkeypatch):
    from llmtune.tasks.qa import QATask

    task = QATask(version_2_with_negative=True)
    task.with_negative = True
    rows = [{"context": "Lima is the capital of Peru.", "question": "What is the capital of Peru?", "answers": {"text": ["Lima"], "answer_start": [0]}},
            {"context": "It rained.", "question": "Who won?", "answers": {"text": [], "answer_start": []}}]
    seen = _generating(monkeypatch, ['"Lima".\nIt is a city.', "No answer"])
    predictions = task.prompt_predict(None, PLAIN, rows, rows[1:], _settings())
    assert predictions == ["Lima", ""]
    assert seen[0].startswith('Answer the question') and 'Question: Who won?\nAnswer: no answer\n\n' in seen[0]
    metrics = task.prompt_metrics(rows, predictions)
    assert metrics["exact"] == 1.0 and metrics["HasAns_f1"] == 1.0 and metrics["NoAns_exact"] == 1.0


def test_seq2seq_replies_are_scored_with_the_task_metric(monkeypatch):
    from llmtune.tasks.seq2seq import TranslationTask

    task = TranslationTask()
    rows = [{"source": "Guten Morgen", "target": "Good morning"}, {"source": "Danke", "target": "Thank you"}]
    seen = _generating(monkeypatch, ["Good morning\n\nTranslate the text.", "Thanks"])
    predictions = task.prompt_predict(None, PLAIN, rows, rows[:1], _settings(template="German: {source}\nEnglish:"))
    assert predictions == ["Good morning", "Thanks"]
    assert seen[1] == "German: Guten Morgen\nEnglish:\nGood morning\n\nGerman: Danke\nEnglish:"
    assert set(task.prompt_metrics(rows, predictions)) >= {"bleu", "chrf"}
