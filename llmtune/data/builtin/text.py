"""Built-in pretraining text: the paragraphs of Python's own help topics (pydoc_data)."""

from __future__ import annotations

import hashlib
import re

MIN_PARAGRAPH_CHARS = 40
# A paragraph goes to validation or test when its content hash falls in these buckets of 20,
# about 5% each; hashing the text keeps the split the same in every process and Python build.
_HASH_BUCKETS = 20
_SPLIT_BY_BUCKET = {0: "validation", 1: "test"}


def _help_paragraphs() -> list[str]:
    """Paragraphs of Python's help topics, whitespace collapsed, short and repeated ones dropped."""
    from pydoc_data.topics import (
        topics,  # large module; import only when "text" is asked for
    )

    paragraphs: dict[str, None] = {}  # a dict keeps first-seen order while dropping repeats
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            paragraph = " ".join(block.split())
            if len(paragraph) >= MIN_PARAGRAPH_CHARS:
                paragraphs[paragraph] = None
    return list(paragraphs)


def _split_of(paragraph: str) -> str:
    digest = hashlib.sha256(paragraph.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % _HASH_BUCKETS
    return _SPLIT_BY_BUCKET.get(bucket, "train")


def _text_splits() -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for paragraph in _help_paragraphs():
        splits[_split_of(paragraph)].append({"text": paragraph})
    return splits

