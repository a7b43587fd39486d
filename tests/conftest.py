"""Shared test set-up: offline, a private cache, an in-process CLI runner and tiny-run arguments.

The environment is fixed at import time, before anything imports llmtune, datasets or
transformers, so no test can reach the network or touch the user's ~/.cache/llmtune.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("LLMTUNE_DEBUG", None)
_CACHE = tempfile.mkdtemp(prefix="llmtune-test-cache-")
os.environ["LLMTUNE_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
# A saved tokenizer: runs that must match each other exactly (resume, cache hits, several
# processes) use it, so that they test the loop and not tokenizer training (tested on its own).
FIXED_TOKENIZER = ASSETS / "tiny_wordpiece"
# Runs compared number for number turn dropout off (the BERT-style model configs).
NO_DROPOUT = ["+model.config.hidden_dropout_prob=0", "+model.config.attention_probs_dropout_prob=0"]
# Prompt/response pairs for SFT tests (short and long, a quote, a line break).
SFT_SAMPLES = [
    {"prompt": "What is 2 plus 3?", "response": "2 plus 3 is 5."},
    {"prompt": "Name the capital city of Peru.", "response": "The capital of Peru is Lima."},
    {"prompt": "Sort these numbers from smallest to largest: 9, 4, 7.", "response": "4, 7, 9."},
    {"prompt": "Turn this shopping list into numbered steps: egg x2, pear x1.", "response": "1. Buy two eggs.\n2. Buy one pear."},
    {"prompt": "Hi", "response": "Hello there, how can I help?"},
    {"prompt": "What is the opposite of \"hot\"?", "response": "The opposite of \"hot\" is \"cold\"."},
]


def subprocess_env(cache) -> dict:
    """The environment of an llmtune child process (torchrun): offline, a private cache, one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LLMTUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("LLMTUNE_DEBUG", None)
    return env


@contextlib.contextmanager
def nan_loss_at_call(n: int):
    """The training loss (llmtune.engine.loss.cross_entropy_sum, the default Task.loss) is NaN
    on its n-th call; yields the list of calls so far."""
    from llmtune.engine import loss as loop

    real, calls = loop.cross_entropy_sum, []

    def cross_entropy_sum(logits, labels):
        calls.append(1)
        loss = real(logits, labels)
        return loss * float("nan") if len(calls) == n else loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "cross_entropy_sum", cross_entropy_sum)
        yield calls


@dataclass
class Result:
    """What one `llmtune ...` call did: exit code (0 on success), stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def _release_llmtune_logging() -> None:
    """Close the handlers a run attached (its run.log file, the captured stderr)."""
    logger = logging.getLogger("llmtune")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def run_cli(*args: str) -> Result:
    """Run `llmtune ARGS` in this process (imports are paid once) and capture its output.

    A UserError exits with status 2 (SystemExit); any other exception propagates, as a bug
    should. `main` returns None on success, which is code 0.
    """
    from llmtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        _release_llmtune_logging()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def cli():
    """`cli(*args) -> Result(code, out, err)`: the real `llmtune` entry point, in process."""
    return run_cli


# ------------------------------------------------------------------ tiny runs (2-4 steps)
def ner_args(out: Path, steps: int = 4) -> list[str]:
    return [
        "finetune", "task=ner", "model=tiny_bert",
        f"data.train_file={ASSETS / 'ner_train.conll'}", f"data.validation_file={ASSETS / 'ner_dev.conll'}",
        f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.eval_every=2", "trainer.log_every=1",
        f"output_dir={out}",
    ]


def cls_args(out: Path, steps: int = 4) -> list[str]:
    return [
        "finetune", "task=classification", "model=tiny_bert",
        f"data.train_file={ASSETS / 'cls_train.jsonl'}", f"data.validation_file={ASSETS / 'cls_dev.jsonl'}",
        f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.eval_every=2", "trainer.log_every=1",
        f"output_dir={out}",
    ]


def lm_args(task: str, out: Path, steps: int = 3) -> list[str]:
    model = "tiny_bert" if task == "mlm" else "tiny_llama"
    return [
        "pretrain", f"task={task}", f"model={model}", f"data.train_file={ASSETS / 'corpus.txt'}", "task.max_length=32",
        f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.batch_size=4", "trainer.eval_every=2", "trainer.log_every=1",
        f"output_dir={out}",
    ]


@pytest.fixture
def tiny_ner_args(tmp_path) -> list[str]:
    return ner_args(tmp_path / "run")


@pytest.fixture
def tiny_cls_args(tmp_path) -> list[str]:
    return cls_args(tmp_path / "run")


@pytest.fixture
def tiny_mlm_args(tmp_path) -> list[str]:
    return lm_args("mlm", tmp_path / "run")


@pytest.fixture
def tiny_clm_args(tmp_path) -> list[str]:
    return lm_args("clm", tmp_path / "run")


# ------------------------------------------------------------------ tokenizers for unit tests
def corpus_lines() -> list[str]:
    return [line for line in (ASSETS / "corpus.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def bert_tok():
    """A fast BERT-style tokenizer trained on the test corpus (specials: [PAD] [UNK] [CLS] [SEP] [MASK])."""
    from llmtune.tokenization import train_tokenizer

    return train_tokenizer(corpus_lines(), decoder=False, vocab_size=200)


@pytest.fixture(scope="session")
def gpt_tok():
    """A fast byte-level BPE tokenizer trained on the test corpus (EOS <|endoftext|>, pad <pad>)."""
    from llmtune.tokenization import train_tokenizer

    return train_tokenizer(corpus_lines(), decoder=True, vocab_size=300)


def read_log(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
