"""The Task contract holds (DESIGN.md): outside llmtune/tasks/ no code names a task or probes one
with getattr/hasattr, and every task declares no hook that the base class lacks.

Scanned: llmtune/ except
  - llmtune/tasks/          where task-specific code belongs;
  - llmtune/data/builtin/   the built-in sample data, generated per data kind (`task.builtin`);
  - llmtune/bench/          the benchmark harness, which builds its HF Trainer and raw-loop
                            baselines for named tasks on purpose.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import tokenize
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmtune.tasks.base import Task

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "llmtune"
EXCLUDED = ("tasks", "data/builtin", "bench")
TASK_CONFIGS = sorted((ROOT / "conf" / "task").glob("*.yaml"))


def scanned_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(p.relative_to(PACKAGE).as_posix().startswith(f"{d}/") for d in EXCLUDED)]


def task_names() -> set[str]:
    return {p.stem for p in TASK_CONFIGS} | {str(OmegaConf.load(p).get("name")) for p in TASK_CONFIGS}


def violations(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each task name as a whole string literal, each `task.name ==` / `!=`,
    and each getattr/hasattr whose object is a task (`task`, `self.task`, `trainer.task`, ...).
    Comments and docstrings are text, not code: only tokens count."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
    found = []
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.STRING and _literal(tok.string) in names:
            found.append((tok.start[0], f"task name {tok.string}"))
        if tok.string in ("getattr", "hasattr") and i + 1 < len(tokens) and tokens[i + 1].string == "(":
            target = _dotted(tokens, i + 2)
            if target and target[-1] == "task":
                found.append((tok.start[0], f"{tok.string}({'.'.join(target)}, ...)"))
        if tok.string == "name" and i >= 2 and tokens[i - 1].string == "." and tokens[i - 2].string == "task" and i + 1 < len(tokens) and tokens[i + 1].string in ("==", "!="):
            found.append((tok.start[0], f"task.name {tokens[i + 1].string}"))
    return found


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):  # f-strings and the like: not a plain literal
        return None


def _dotted(tokens, start: int) -> list[str]:
    """The dotted name starting at tokens[start] (`self.trainer.task` -> [self, trainer, task])."""
    parts, i = [], start
    while i < len(tokens) and tokens[i].type == tokenize.NAME:
        parts.append(tokens[i].string)
        if i + 1 < len(tokens) and tokens[i + 1].string == ".":
            i += 2
        else:
            break
    return parts


def test_the_scan_finds_what_it_looks_for():
    # The checker itself: each pattern is caught in code and ignored in comments and docstrings.
    code = (
        '"""Docs may say "ner" and getattr(task, x)."""\n'
        'if cfg.task == "ner":  # a comment: "clm", getattr(task, "x")\n'
        '    pass\n'
        'x = getattr(self.trainer.task, "labels", None) or hasattr(task, "y")\n'
        'ok = run.task.name == other\n'
        'fine = f"task={task.name}" + "nerd" + getattr(model, "task", None)\n'
    )
    assert [line for line, _ in violations(code, {"ner", "clm"})] == [2, 4, 4, 5]


def test_nothing_outside_the_tasks_names_or_probes_a_task():
    names = task_names()
    assert {"ner", "classification", "mlm", "clm", "sft"} <= names
    files = scanned_files()
    assert PACKAGE / "engine" / "loop.py" in files and PACKAGE / "builders.py" in files
    assert not any("bench" in p.parts or "tasks" in p.parts for p in files)
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in files for line, what in violations(p.read_text(), names)]
    assert not found, "task-specific code outside llmtune/tasks/ (add a hook to llmtune/tasks/base.py instead):\n" + "\n".join(found)


def _task_class(config: Path) -> type:
    module, _, name = str(OmegaConf.load(config)["_target_"]).rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: p.stem)
def test_every_task_derives_from_task_and_declares_no_new_hook(config):
    cls = _task_class(config)
    assert issubclass(cls, Task), f"{cls.__name__} does not derive from llmtune.tasks.base.Task"
    own = [name for name, member in vars(cls).items() if not name.startswith("_") and inspect.isfunction(member)]
    assert own, f"{cls.__name__} defines no hook at all?"
    undeclared = [name for name in own if not callable(getattr(Task, name, None))]
    assert not undeclared, f"{cls.__name__} defines {undeclared}, which Task does not declare: declare them in llmtune/tasks/base.py with a default, or make them private (_name)"
