"""Built-in task sequences for continual learning (`llmtune continual sequence=...`).

- "ner-domains" (domain-incremental): NER over the same entity types (PER, LOC, ORG) in three
  differently worded domains, news, medical and sports. Each domain has its own sentence
  templates and its own third of the people and organisation names, so what a later domain
  teaches does not rehearse an earlier one. Sports, last, names its teams after their cities
  (metonymy, as sports copy does: "LISBON BEAT PORTO" is ORG ORG), drawing both its teams and
  its venues from the news domain's places: the same names that news tags LOC, often in the
  same sentence positions. Only the context tells the two apart, so training on sports alone
  pulls the news domain's places towards ORG: the forgetting that continual methods exist for.
- "topics" (class-incremental): topic classification where each stage brings new classes,
  business and science first, then sports and world (the texts of the "classification" data).

Each stage's data is its own built-in kind (`task.builtin=ner_news`, ...), generated from a
private `random.Random` seeded per kind, so every stage is the same in every run and process.
"""

from __future__ import annotations

import random
import zlib

from llmtune.data.builtin.classification import HARD_FRACTION, _topic_text
from llmtune.data.builtin.ner import FIRST_NAMES, LAST_NAMES, ORG_STEMS, PLACES, _iob2

# Smaller than the single-task data: a sequence evaluates every stage after every stage.
SEQUENCE_SPLIT_SIZES = {"train": 800, "validation": 150, "test": 200}
DOMAINS = ("news", "medical", "sports")
TOPIC_STAGES = {"topics_a": ("business", "science"), "topics_b": ("sports", "world")}

# name -> {task, stages: [(stage name, built-in kind)]}; the stages run in this order.
SEQUENCES: dict[str, dict] = {
    "ner-domains": {"task": "ner", "stages": [(d, f"ner_{d}") for d in DOMAINS]},
    "topics": {"task": "classification", "stages": [("business-science", "topics_a"), ("sports-world", "topics_b")]},
}

ORG_SUFFIXES = {
    "news": ("Party", "Ministry", "Council", "Agency", "Commission"),
    "medical": ("Hospital", "Clinic", "Pharmaceuticals", "Medical Centre", "Health Trust"),
}
# Tokens are space-separated; {PER} {LOC} {ORG} are entities, {NUM} {DAY} plain words.
DOMAIN_TEMPLATES = {
    "news": (
        "{PER} , a senior official of the {ORG} , said talks in {LOC} would resume on {DAY} .",
        "The {ORG} confirmed that {PER} will visit {LOC} next week .",
        "Voters in {LOC} rejected the proposal backed by the {ORG} .",
        "{PER} resigned from the {ORG} after the vote in {LOC} .",
        "Protesters marched to the offices of the {ORG} in {LOC} on {DAY} .",
        "The minister , {PER} , defended the budget in a speech in {LOC} .",
        "According to the {ORG} , {NUM} people were moved from {LOC} after the floods .",
        "{PER} and {PER} signed the agreement in {LOC} .",
        "{LOC} and {LOC} agreed to reopen the border on {DAY} .",
        "{LOC} imposed new tariffs on steel from {LOC} .",
    ),
    "medical": (
        "dr {PER} admitted the patient to {ORG} in {LOC} with a fever .",
        "the patient was referred by {PER} to the cardiology unit of {ORG} .",
        "{ORG} in {LOC} reported {NUM} new cases of measles this week .",
        "nurse {PER} gave the first dose at the {ORG} ward in {LOC} .",
        "a trial run by {ORG} tested the drug on {NUM} patients in {LOC} .",
        "the scan ordered by dr {PER} showed no fracture .",
        "{PER} was discharged from {ORG} after {NUM} days of treatment .",
        "surgeons at {ORG} in {LOC} removed the tumour on {DAY} .",
    ),
    "sports": (
        "{PER} SCORED TWICE AS {ORG} BEAT {ORG} IN {LOC} .",
        "{ORG} SIGNED {PER} ON A {NUM} YEAR DEAL .",
        "{ORG} AND {ORG} DREW {NUM} - {NUM} ON {DAY} .",
        "FANS IN {LOC} CHEERED AS {ORG} LIFTED THE CUP .",
        "{PER} WAS SENT OFF IN THE {NUM} MINUTE AGAINST {ORG} .",
        "{ORG} WILL PLAY THEIR HOME GAMES IN {LOC} NEXT SEASON .",
        "{ORG} BEAT {ORG} ON {DAY} .",
        "{PER} JOINED {ORG} FROM {ORG} .",
    ),
}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_NUMBERS = ("two", "three", "five", "12", "40", "90")


def _third(names: tuple[str, ...], k: int) -> tuple[str, ...]:
    return tuple(n for i, n in enumerate(names) if i % 3 == k)


def _casing(domain: str, text: str) -> str:
    # Sports copy is set in capitals (wire-style headlines), medical notes in lower case with
    # names kept: the same types, worded and cased differently per domain.
    return text.upper() if domain == "sports" else text


def _entity(rng: random.Random, slot: str, domain: str, held_out: bool) -> str:
    k = DOMAINS.index(domain)
    pools = {
        "PER": (_third(FIRST_NAMES, k), _third(LAST_NAMES, k)),
        "LOC": (_third(PLACES, 0 if domain == "sports" else k),),
        # Sports teams are the news domain's places (see the module docstring).
        "ORG": (_third(PLACES, 0),) if domain == "sports" else (_third(ORG_STEMS, k), ORG_SUFFIXES[domain]),
    }[slot]
    # Every fifth name of a pool is kept for evaluation (held_out): scores measure context.
    picks = [rng.choice([n for i, n in enumerate(pool) if (i % 5 == 4) == held_out] or list(pool)) for pool in pools]
    if slot == "ORG" and domain == "news":
        return f"{picks[0]} {picks[1]}" if rng.random() < 0.5 else f"National {picks[0]} {picks[1]}"
    return " ".join(picks)


def _sentence(rng: random.Random, domain: str, held_out: bool) -> dict:
    tokens: list[str] = []
    tags: list[str] = []
    for word in rng.choice(DOMAIN_TEMPLATES[domain]).split():
        slot = word[1:-1] if word.startswith("{") else None
        if slot in ("PER", "LOC", "ORG"):
            parts = _casing(domain, _entity(rng, slot, domain, held_out and rng.random() < 0.5)).split()
            tags.extend(_iob2(slot, len(parts)))
        else:
            text = rng.choice(_DAYS) if slot == "DAY" else rng.choice(_NUMBERS) if slot == "NUM" else word
            parts = [_casing(domain, text)]
            tags.append("O")
        tokens.extend(parts)
    return {"tokens": tokens, "tags": tags}


def _rng(kind: str) -> random.Random:
    return random.Random(zlib.crc32(kind.encode()))


def ner_domain_splits(domain: str) -> dict[str, list[dict]]:
    rng = _rng(f"ner_{domain}")
    return {split: [_sentence(rng, domain, held_out=split != "train") for _ in range(size)] for split, size in SEQUENCE_SPLIT_SIZES.items()}


def topic_stage_splits(kind: str) -> dict[str, list[dict]]:
    rng, topics = _rng(kind), TOPIC_STAGES[kind]
    splits = {}
    for split, size in SEQUENCE_SPLIT_SIZES.items():
        labels = [topics[i % len(topics)] for i in range(size)]
        rng.shuffle(labels)
        splits[split] = [{"text": _topic_text(rng, label, hard=rng.random() < HARD_FRACTION), "label": label} for label in labels]
    return splits


SEQUENCE_KINDS = (*(f"ner_{d}" for d in DOMAINS), *TOPIC_STAGES)


def sequence_splits(kind: str) -> dict[str, list[dict]]:
    """The rows of one stage's built-in kind (one of SEQUENCE_KINDS)."""
    if kind in TOPIC_STAGES:
        return topic_stage_splits(kind)
    return ner_domain_splits(kind.removeprefix("ner_"))
