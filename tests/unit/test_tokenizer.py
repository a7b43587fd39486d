"""Tokenizers trained for models built from scratch: special tokens, and reproducibility.

Reproducibility matters beyond neatness: a resumed run, every process of a multi-process run
and the tokenized-data cache all rely on training the same tokenizer from the same text.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from conftest import ROOT, corpus_lines
from llmtune.tokenization import train_tokenizer

_HASH_SCRIPT = """
import hashlib, sys
from pathlib import Path
from llmtune.tokenization import train_tokenizer
texts = [l for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
for decoder in (False, True):
    tok = train_tokenizer(texts, decoder=decoder, vocab_size=300)
    print(hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest())
"""


def _digest(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def test_encoder_tokenizer(bert_tok):
    assert bert_tok.is_fast
    assert len(bert_tok) <= 200
    for token in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(bert_tok, f"{token}_token_id") is not None, token
    ids = bert_tok("The market opens.")["input_ids"]
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    pair = bert_tok("one", "two")
    assert pair["input_ids"].count(bert_tok.sep_token_id) == 2
    assert set(pair["token_type_ids"]) == {0, 1}
    words = bert_tok(["Farmers", "arrive", "early"], is_split_into_words=True).word_ids()
    assert words[0] is None and words[-1] is None
    assert [w for w in words if w is not None] == sorted(w for w in words if w is not None)


def test_encoder_tokenizer_is_wordpiece(bert_tok):
    from tokenizers import models

    assert isinstance(bert_tok.backend_tokenizer.model, models.WordPiece)
    pieces = bert_tok.tokenize("Farmers arrive with baskets of apples")
    assert any(p.startswith("##") for p in pieces) and not pieces[0].startswith("##")
    assert "##" not in set(bert_tok.get_vocab()) and len(bert_tok.all_special_tokens) == 5
    text = corpus_lines()[1]
    assert bert_tok.decode(bert_tok(text)["input_ids"], skip_special_tokens=True) == text  # "##" pieces joined


def test_decoder_tokenizer(gpt_tok):
    assert gpt_tok.is_fast
    assert gpt_tok.eos_token_id is not None and gpt_tok.pad_token_id is not None
    assert gpt_tok.pad_token_id != gpt_tok.eos_token_id
    text = "The morning market opens before the sun is fully up."
    ids = gpt_tok(text, add_special_tokens=False)["input_ids"]
    assert gpt_tok.decode(ids) == text  # byte-level: lossless


@pytest.mark.parametrize("decoder", [False, True])
def test_training_is_deterministic_in_process(decoder):
    texts = corpus_lines()
    digests = {_digest(train_tokenizer(texts, decoder=decoder, vocab_size=300)) for _ in range(4)}
    assert len(digests) == 1


def test_training_is_deterministic_across_processes(tmp_path):
    corpus = ROOT / "tests" / "assets" / "corpus.txt"
    outputs = set()
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(corpus)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout)
    texts = corpus_lines()
    here = "".join(_digest(train_tokenizer(texts, decoder=d, vocab_size=300)) + "\n" for d in (False, True))
    outputs.add(here)
    assert len(outputs) == 1
