"""SQuAD's own JSON layout, flattened into one row per question.

A SQuAD file (v1.1 or v2.0) is one object: {"version": ..., "data": [{"title", "paragraphs":
[{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}],
"is_impossible"}]}]}]}. Each question becomes a row {"id", "title", "context", "question",
"answers": {"text": [...], "answer_start": [...]}}, the layout of the hub datasets squad and
squad_v2 (and of task=qa's JSON lines); an impossible question gets empty answer lists.
Rows keep the file's order, so "row N" in later errors is the N-th question of the file.
"""

from __future__ import annotations

from pathlib import Path

from llmtune.errors import UserError


def is_squad(value: object) -> bool:
    """Whether a parsed JSON document has SQuAD's layout (a "data" list of articles)."""
    return (
        isinstance(value, dict) and isinstance(value.get("data"), list)
        and all(isinstance(a, dict) and "paragraphs" in a for a in value["data"])
    )


def _items(container: dict, field: str, where: str) -> list[dict]:
    items = container.get(field)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UserError(f"{where} has no '{field}' list of objects; SQuAD JSON nests data -> paragraphs -> qas -> answers.")
    return items


def _answers(qa: dict, where: str) -> dict:
    if qa.get("is_impossible"):
        return {"text": [], "answer_start": []}
    answers = _items(qa, "answers", where)
    return {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}


def squad_rows(value: dict, path: Path, key: str) -> list[dict]:
    """One row per question of a SQuAD document (is_squad(value)); one line naming the
    article, paragraph and question when the nesting is broken."""
    rows = []
    for a, article in enumerate(value["data"], start=1):
        for p, paragraph in enumerate(_items(article, "paragraphs", f"{key}: {path} article {a}"), start=1):
            where = f"{key}: {path} article {a} paragraph {p}"
            for q, qa in enumerate(_items(paragraph, "qas", where), start=1):
                rows.append({
                    "id": str(qa.get("id", len(rows) + 1)),
                    "title": str(article.get("title", "")),
                    "context": paragraph.get("context"),
                    "question": qa.get("question"),
                    "answers": _answers(qa, f"{where} question {q}"),
                })
    if not rows:
        raise UserError(f"{key}: {path} is SQuAD JSON without any question; add qas to its paragraphs.")
    return rows
