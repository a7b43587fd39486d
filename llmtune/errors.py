"""User-facing errors: one line saying what is wrong, where, and how to fix it.

Anything a user can cause (a typo in a key, a missing file, a malformed line) raises
`UserError`. The CLI prints its message on one line and exits with status 2; the full traceback
only appears with LLMTUNE_DEBUG=1. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""

    exit_code = 2


class TrainingError(UserError):
    """Training cannot go on (non-finite loss, out of memory, disk full); reported as one line
    with what to change. The last complete checkpoint is left intact."""

    exit_code = 3


class Interrupted(UserError):
    """SIGTERM/SIGINT: a checkpoint was written and the run stopped; resume with
    trainer.resume=auto. Exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid spelling of `word` among `choices`, or None when nothing is close."""
    choices = list(choices)
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if match:
        return match[0]
    # Also catch a right last segment under a wrong prefix: trainer.lr -> optimizer.lr.
    tail = word.rsplit(".", 1)[-1]
    same_tail = [c for c in choices if c.rsplit(".", 1)[-1] == tail]
    return same_tail[0] if len(same_tail) == 1 else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' or '' — for appending to a message."""
    match = closest(word, choices)
    return f" Did you mean '{match}'?" if match else ""


def closest_key(key: str, keys: Iterable[str]) -> str | None:
    """The most likely intended dotted config key for a misspelt one.

    Tried in order: a close sibling (trainer.max_step -> trainer.max_steps); the same leaf
    under another group (trainer.lr -> optimizer.lr); a close leaf elsewhere; a word of the
    leaf that is a key's leaf (trainer.lr_typo -> optimizer.lr); the whole key."""
    keys = list(keys)
    parent, _, leaf = key.rpartition(".")

    def leaf_of(k: str) -> str:
        return k.rpartition(".")[2]

    siblings = {leaf_of(k): k for k in keys if k.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if match:
        return siblings[match[0]]
    by_leaf: dict[str, list[str]] = {}
    for k in keys:
        by_leaf.setdefault(leaf_of(k), []).append(k)
    for candidate in [leaf, *difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75), *leaf.split("_")]:
        if len(by_leaf.get(candidate, [])) == 1:
            return by_leaf[candidate][0]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    return match[0] if match else None
