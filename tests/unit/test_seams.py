"""The seams under the verbs: the Task base class's defaults, batch metadata, callbacks as a
config group, NER words and entities with character offsets, and locating a trained run."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ner_args, read_log, run_cli
from llmtune.engine.callbacks import Callback
from llmtune.errors import UserError
from llmtune.tasks.base import EvalContext, PredictContext, Task, model_inputs
from llmtune.tasks.ner import entities, split_words


# ------------------------------------------------------------------ the Task base class
def test_base_task_defaults_are_declared_and_safe():
    task = Task()
    assert task.model_kwargs() == {} and task.labels == () and task.is_pretraining is False
    assert task.fingerprint() == {"task": "task", "max_length": 128}
    assert task.read_input("a text", "x line 1") == {"text": "a text"}
    with pytest.raises(UserError, match="x line 2: expected a text"):
        task.read_input(3, "x line 2")
    with pytest.raises(UserError, match="no predictions"):
        task.predict(None, [], PredictContext(tokenizer=None))
    task.load_state({"labels": ["a", "b"]})
    assert task.state() == {"labels": ["a", "b"]}


def test_metadata_never_reaches_the_model():
    batch = {"input_ids": torch.ones(1, 2, dtype=torch.long), "example_ids": ["row-1"], "offsets": [[(0, 3)]]}
    assert list(model_inputs(batch)) == ["input_ids"]

    seen = {}

    class Model:
        def __call__(self, **kwargs):
            seen.update(kwargs)
            return type("Out", (), {"logits": torch.zeros(1, 2, 3)})()

    Task().logits(Model(), batch, torch.zeros(1, 2))
    assert list(seen) == ["input_ids"]


def test_gather_objects_on_one_process_keeps_order():
    from accelerate import Accelerator

    ctx = EvalContext(accelerator=Accelerator(cpu=True))
    assert ctx.gather_objects(["b", "a", {"x": 1}]) == ["b", "a", {"x": 1}]


def test_every_task_option_derives_from_task():
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from llmtune.paths import conf_dir

    for path in sorted((conf_dir() / "task").glob("*.yaml")):
        cls = get_class(OmegaConf.load(path)._target_)
        assert issubclass(cls, Task), path.name
        assert cls().is_pretraining == bool(OmegaConf.load(path).get("is_pretraining", False)), path.name


# ------------------------------------------------------------------ NER words and entities
def test_split_words_gives_offsets_into_the_text():
    text = "Dr. O'Neil met Jean-Luc in the U.S., twice."
    words = split_words(text)
    assert all(text[start:end] == word for word, start, end in words)
    assert [w for w, _, _ in words][:6] == ["Dr", ".", "O'Neil", "met", "Jean-Luc", "in"]
    assert "U.S" in [w for w, _, _ in words]


def test_entities_group_iob2_tags_with_offsets():
    text = "Anna Berg lives in New York ."
    spans = split_words(text)
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    found = entities(tags, spans, text, [0.9, 0.7, 1, 1, 0.8, 0.6, 1])
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in found] == [("PER", "Anna Berg", 0, 9), ("LOC", "New York", 19, 27)]
    assert found[0]["score"] == pytest.approx(0.8)
    # Two B- in a row are two entities; an I- of another type starts a new one.
    found = entities(["B-PER", "B-PER", "I-LOC"], spans[:3], text, [1, 1, 1])
    assert [e["text"] for e in found] == ["Anna", "Berg", "lives"]


# ------------------------------------------------------------------ callbacks as a config group
class Recorder(Callback):
    """A callback from outside llmtune, named on the command line: it overrides only the hook
    it needs (the base class declares every hook with a no-op default)."""

    def __init__(self, run_dir, is_main):
        self.path = run_dir / "recorded.jsonl"

    def on_log(self, state, record):
        with self.path.open("a") as f:
            f.write(json.dumps({"step": record["step"]}) + "\n")


def test_callbacks_group_adds_and_removes_callbacks(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*ner_args(run, steps=2), "callbacks.progress=null", f"+callbacks.recorder._target_={__name__}.Recorder")
    assert result.code == 0, result.err[-2000:]
    recorded = [json.loads(line)["step"] for line in (run / "recorded.jsonl").read_text().splitlines()]
    assert recorded == [r["step"] for r in read_log(run) if r["type"] == "train"] == [1, 2]


def test_quiet_callbacks_keep_the_log(tmp_path):
    run = tmp_path / "run"
    assert run_cli(*ner_args(run, steps=2), "callbacks=quiet").code == 0
    assert [r["step"] for r in read_log(run) if r["type"] == "train"] == [1, 2]


# ------------------------------------------------------------------ locating a trained run
def test_locate_refuses_what_is_not_a_run(tmp_path):
    from llmtune.trained import locate

    with pytest.raises(UserError, match="no such file or directory"):
        locate(tmp_path / "nope")
    with pytest.raises(UserError, match="not a trained run"):
        locate(tmp_path)
