"""Built-in relation data: template sentences with a head and a tail entity and their relation.

The relation depends on the words that link the two entities and on which one is the head:
every pair of entity types occurs with at least two labels (e.g. PER -> ORG is
per:employee_of in "Anna Berg works for Bluepeak Bank" but no_relation in "Anna Berg founded
Bluepeak Bank", whose ORG -> PER pair is org:founded_by), and a sentence with three or four
entities links only some of its pairs. So neither the majority class nor the entity types
alone solve it. Names come from the NER generator's lists; a fifth of them appear only in
validation/test.
"""

from __future__ import annotations

import random

from llmtune.data.builtin._common import DAYS, SPLIT_SIZES
from llmtune.data.builtin.ner import _draw_name, _name_pools

NEGATIVE = "no_relation"
SLOT_TYPES = {"p": "PER", "q": "PER", "o": "ORG", "l": "LOC"}
SLOT_DRAW = {"PER": "PER", "ORG": "COMPANY", "LOC": "LOC"}

# (template, [(head slot, tail slot, relation), ...]): {p}/{q} are people, {o} an organisation,
# {l} a place; {parent}/{child} words are filled at random (mother/father, son/daughter).
TEMPLATES: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    # employment: PER -> ORG; the reverse pair is not a relation
    ("{p} works for {o} .", (("p", "o", "per:employee_of"), ("o", "p", NEGATIVE))),
    ("{p} is an engineer at {o} .", (("p", "o", "per:employee_of"), ("o", "p", NEGATIVE))),
    ("{o} hired {p} as its new analyst .", (("p", "o", "per:employee_of"), ("o", "p", NEGATIVE))),
    ("{p} , a manager at {o} , declined to comment .", (("p", "o", "per:employee_of"), ("o", "p", NEGATIVE))),
    # founding: ORG -> PER is org:founded_by, PER -> ORG per:founder_of
    ("{p} founded {o} in 1998 .", (("o", "p", "org:founded_by"), ("p", "o", "per:founder_of"))),
    ("{o} was founded by {p} .", (("o", "p", "org:founded_by"), ("p", "o", "per:founder_of"))),
    ("{o} , which {p} started , is growing fast .", (("o", "p", "org:founded_by"), ("p", "o", "per:founder_of"))),
    # people and organisations with no relation
    ("{p} read an article about {o} .", (("p", "o", NEGATIVE), ("o", "p", NEGATIVE))),
    ("{p} has never heard of {o} .", (("p", "o", NEGATIVE), ("o", "p", NEGATIVE))),
    # family: the direction decides parent_of vs child_of
    ("{p} is the {parent} of {q} .", (("p", "q", "per:parent_of"), ("q", "p", "per:child_of"))),
    ("{q} is the {child} of {p} .", (("p", "q", "per:parent_of"), ("q", "p", "per:child_of"))),
    ("{p} and {pronoun} {child} {q} live nearby .", (("p", "q", "per:parent_of"), ("q", "p", "per:child_of"))),
    ("{p} is married to {q} .", (("p", "q", "per:spouse_of"), ("q", "p", "per:spouse_of"))),
    ("{p} and {pronoun} wife {q} live nearby .", (("p", "q", "per:spouse_of"), ("q", "p", "per:spouse_of"))),
    ("{p} met {q} at a conference .", (("p", "q", NEGATIVE), ("q", "p", NEGATIVE))),
    ("{p} and {q} played chess all night .", (("p", "q", NEGATIVE), ("q", "p", NEGATIVE))),
    # people and places
    ("{p} lives in {l} .", (("p", "l", "per:lives_in"), ("l", "p", NEGATIVE))),
    ("{p} moved to {l} last year .", (("p", "l", "per:lives_in"),)),
    ("{p} has a small flat in {l} .", (("p", "l", "per:lives_in"),)),
    ("{p} was born in {l} .", (("p", "l", "per:born_in"), ("l", "p", NEGATIVE))),
    ("{p} , a native of {l} , spoke first .", (("p", "l", "per:born_in"),)),
    ("{l} is the birthplace of {p} .", (("p", "l", "per:born_in"),)),
    ("{p} flew over {l} .", (("p", "l", NEGATIVE),)),
    ("{p} wrote a book about {l} .", (("p", "l", NEGATIVE),)),
    # organisations and places
    ("{o} is based in {l} .", (("o", "l", "org:based_in"), ("l", "o", NEGATIVE))),
    ("{o} has its headquarters in {l} .", (("o", "l", "org:based_in"),)),
    ("{l} is home to {o} .", (("o", "l", "org:based_in"),)),
    ("{o} sells its products in {l} .", (("o", "l", NEGATIVE),)),
    ("{o} opened a pop-up stand in {l} .", (("o", "l", NEGATIVE),)),
    # several entities: only some pairs are linked
    ("{p} , who works for {o} , met {q} in {l} .", (("p", "o", "per:employee_of"), ("q", "o", NEGATIVE), ("q", "l", NEGATIVE), ("p", "q", NEGATIVE))),
    ("{p} met {q} , who lives in {l} .", (("q", "l", "per:lives_in"), ("p", "l", NEGATIVE))),
    ("{p} , the {parent} of {q} , founded {o} .", (("p", "q", "per:parent_of"), ("q", "p", "per:child_of"), ("o", "p", "org:founded_by"), ("o", "q", NEGATIVE))),
    ("{p} was born in {l} and works for {o} .", (("p", "l", "per:born_in"), ("p", "o", "per:employee_of"), ("o", "l", NEGATIVE))),
    ("{o} , based in {l} , hired {p} .", (("o", "l", "org:based_in"), ("p", "o", "per:employee_of"), ("p", "l", NEGATIVE))),
)
# Each example draws a pair of entity types, then one of the labels that pair has, evenly: so
# the types alone leave a choice of two to four labels (no_relation is about 38% of pairs).
def _pair_labels() -> dict[tuple[str, str], list[str]]:
    """(head type, tail type) -> its labels, for the pairs with more than one label."""
    found: dict[tuple[str, str], list[str]] = {}
    for _, queries in TEMPLATES:
        for head, tail, relation in queries:
            labels = found.setdefault((SLOT_TYPES[head], SLOT_TYPES[tail]), [])
            if relation not in labels:
                labels.append(relation)
    return {pair: labels for pair, labels in sorted(found.items()) if len(labels) > 1}


PAIR_LABELS = _pair_labels()
OPENERS = ("", "", "Last year ,", "According to local reports ,", "On {day} ,", "Reporters confirmed that")
WORDS = {"parent": ("mother", "father"), "child": ("son", "daughter"), "pronoun": ("her", "his")}


def _fill(rng: random.Random, template: str, pools) -> tuple[list[str], dict[str, dict]]:
    """Tokens of the filled template and each entity slot's span {start, end, type}."""
    opener = rng.choice(OPENERS).replace("{day}", rng.choice(DAYS))
    tokens, spans, used = opener.split(), {}, set()
    for word in template.split():
        slot = word[1:-1] if word.startswith("{") else None
        if slot in WORDS:
            tokens.append(rng.choice(WORDS[slot]))
            continue
        if slot is None:
            tokens.append(word)
            continue
        kind = SLOT_TYPES[slot]
        name = _draw_name(rng, SLOT_DRAW[kind], rng.choice(pools))
        while name in used:
            name = _draw_name(rng, SLOT_DRAW[kind], rng.choice(pools))
        used.add(name)
        spans[slot] = {"start": len(tokens), "end": len(tokens) + len(name.split()), "type": kind}
        tokens.extend(name.split())
    if tokens[0][0].islower():
        tokens[0] = tokens[0][0].upper() + tokens[0][1:]
    return tokens, spans


def _example(rng: random.Random, pools) -> dict:
    pair = rng.choice(list(PAIR_LABELS))
    relation = rng.choice(PAIR_LABELS[pair])
    choices = [(template, head, tail) for template, queries in TEMPLATES for head, tail, r in queries
               if r == relation and (SLOT_TYPES[head], SLOT_TYPES[tail]) == pair]
    template, head, tail = rng.choice(choices)
    tokens, spans = _fill(rng, template, pools)
    return {"tokens": tokens, "head": spans[head], "tail": spans[tail], "relation": relation}


def _relation_splits(rng: random.Random) -> dict[str, list[dict]]:
    seen, held_out = _name_pools()
    pools_by_split = {"train": (seen,), "validation": (seen, held_out), "test": (seen, held_out)}
    return {
        split: [_example(rng, pools_by_split[split]) for _ in range(size)]
        for split, size in SPLIT_SIZES.items()
    }
