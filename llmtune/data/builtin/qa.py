"""Built-in extractive QA data: short synthetic biographies of several people, with questions.

Each context tells about two to four people, two to four facts each (birth place and year, job
and employer, a move, an instrument, a pet, studies), in shuffled order and mixed with filler
sentences that name other cities, years and companies. A question asks one fact about one
person, in one of several phrasings, so answering needs the question read against the context:
the first name, city or sentence of the context is rarely right. Some questions are
unanswerable (SQuAD v2.0 style: the person is not in the context, or the fact is not told),
and about a third of the contexts run to several hundred tokens, past task.max_length, so
answers also sit in later windows. Names are split as in the NER data: validation and test
also use names training never sees.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmtune.data.builtin._common import DAYS, MONTHS, SPLIT_SIZES, _split_held_out
from llmtune.data.builtin.ner import COMPANY_SUFFIXES, FIRST_NAMES, LAST_NAMES, ORG_STEMS, PLACES

JOBS = (
    "civil engineer", "teacher", "nurse", "landscape architect", "pilot", "chemist", "journalist", "baker",
    "lawyer", "painter", "dentist", "surgeon", "librarian", "carpenter", "photographer",
    "translator", "geologist", "chef", "plumber", "pharmacist",
)  # fmt: skip
INSTRUMENTS = ("violin", "piano", "cello", "guitar", "flute", "trumpet", "drums", "harp", "saxophone", "clarinet", "accordion", "oboe")
ANIMALS = ("dog", "cat", "parrot", "horse", "rabbit", "tortoise", "goat", "hamster")
PET_NAMES = (
    "Biscuit", "Pepper", "Luna", "Milo", "Bella", "Rocky", "Daisy", "Shadow", "Ziggy", "Olive",
    "Mango", "Clover", "Pixel", "Nutmeg", "Waffles", "Juniper", "Toffee", "Bandit",
)  # fmt: skip
# Cities only: the sentences say "the city of {CITY}".
COUNTRIES = frozenset((
    "New Zealand", "South Africa", "Sri Lanka", "Costa Rica", "Saudi Arabia", "North Carolina", "Kenya", "Brazil",
    "Norway", "Canada", "Japan", "Portugal", "Chile", "Ghana", "Iceland", "Peru", "Morocco", "Vietnam", "Finland",
    "Austria", "Egypt", "Scotland",
))
CITIES = tuple(p for p in PLACES if p not in COUNTRIES)
SUBJECTS = ("physics", "history", "medicine", "law", "music", "mathematics", "architecture", "biology", "economics", "philosophy", "chemistry", "geography")


@dataclass(frozen=True)
class Fact:
    """One kind of fact about a person: the sentences that tell it ({P} is the person, the
    other {SLOTS} its values) and, per slot, the questions that ask for it."""

    slots: tuple[str, ...]
    sentences: tuple[str, ...]
    questions: dict[str, tuple[str, ...]]


FACTS: dict[str, Fact] = {
    "born": Fact(
        ("CITY", "YEAR"),
        ("{P} was born in {CITY} in {YEAR}.", "Born in {CITY} in {YEAR}, {P} spent a quiet childhood there.",
         "{P} came into the world in {YEAR}, in the city of {CITY}."),
        {"CITY": ("Where was {P} born?", "In which city was {P} born?", "What is the birthplace of {P}?"),
         "YEAR": ("When was {P} born?", "In what year was {P} born?")},
    ),
    "work": Fact(
        ("JOB", "COMPANY"),
        ("{P} works as a {JOB} at {COMPANY}.", "At {COMPANY}, {P} has a job as a {JOB}.",
         "{P} has worked for {COMPANY} as a {JOB} for several years."),
        {"COMPANY": ("Which company does {P} work for?", "Who employs {P}?", "Where does {P} work?"),
         "JOB": ("What is the job of {P}?", "What does {P} do for a living?", "What is the profession of {P}?")},
    ),
    "moved": Fact(
        ("CITY", "YEAR"),
        ("In {YEAR}, {P} moved to {CITY}.", "{P} moved to {CITY} in {YEAR}.", "{P} settled in {CITY} in {YEAR} and still lives there."),
        {"CITY": ("Where did {P} move to?", "Which city did {P} move to in {YEAR}?"),
         "YEAR": ("When did {P} move to {CITY}?", "In what year did {P} settle in {CITY}?")},
    ),
    "music": Fact(
        ("INSTRUMENT",),
        ("{P} plays the {INSTRUMENT} in a local band.", "In the evenings, {P} practises the {INSTRUMENT}.",
         "{P} has played the {INSTRUMENT} since school."),
        {"INSTRUMENT": ("Which instrument does {P} play?", "What instrument does {P} practise?")},
    ),
    "pet": Fact(
        ("ANIMAL", "PET"),
        ("{P} has a {ANIMAL} called {PET}.", "{P} looks after a {ANIMAL} named {PET}.", "{PET}, a friendly {ANIMAL}, lives with {P}."),
        {"PET": ("What is the name of the pet of {P}?", "What is the {ANIMAL} of {P} called?"),
         "ANIMAL": ("What kind of pet does {P} have?", "What animal is {PET}?")},
    ),
    "study": Fact(
        ("SUBJECT", "UNI"),
        ("{P} studied {SUBJECT} at {UNI}.", "After a degree in {SUBJECT} from {UNI}, {P} travelled for a year."),
        {"SUBJECT": ("What did {P} study?", "Which subject did {P} study at {UNI}?"),
         "UNI": ("Where did {P} study?", "Which university did {P} attend?")},
    ),
}
KINDS = tuple(FACTS)

# Sentences about no one: their cities, years and companies are there to mislead.
FILLERS = (
    "The town of {CITY} held its first book fair in {YEAR}.",
    "Rain fell across {CITY} for most of {MONTH}.",
    "{COMPANY} opened a new office near the station.",
    "A small museum in {CITY} displays old maps of the region.",
    "Most shops in the area close early on {DAY}.",
    "Local newspapers covered the story for several weeks.",
    "The river that runs through the valley floods every few years.",
    "Tickets for the summer concerts sold out within days.",
    "Many families in the neighbourhood keep a garden behind the house.",
    "The old railway line was turned into a cycling path in {YEAR}.",
    "Visitors often ask about the bell tower in the main square.",
    "The weather that spring was unusually mild.",
    "Some of the streets still carry the names of former mayors.",
    "A new bridge across the river was finished in {YEAR}.",
    "The market sells fresh fish every {DAY} morning.",
    "Several schools in {CITY} teach music to young children.",
    "The library stays open late during exam season.",
    "Heavy snow closed the mountain roads for a week in {MONTH}.",
    "{COMPANY} sponsors the annual regatta on the lake.",
    "A documentary about the harbour was filmed in {YEAR}.",
)
UNANSWERABLE = 0.15   # share of questions with no answer in their context
LONG = 0.3            # share of contexts with many filler sentences (several windows)
_SLOT = re.compile(r"\{([A-Z]+)\}")


@dataclass(frozen=True)
class _Pool:
    first: tuple[str, ...]
    last: tuple[str, ...]
    places: tuple[str, ...]
    stems: tuple[str, ...]


def _pools() -> tuple[_Pool, _Pool]:
    pairs = [_split_held_out(names) for names in (FIRST_NAMES, LAST_NAMES, CITIES, ORG_STEMS)]
    return _Pool(*(p[0] for p in pairs)), _Pool(*(p[1] for p in pairs))


def _value(rng: random.Random, slot: str, pool: _Pool) -> str:
    if slot == "CITY":
        return rng.choice(pool.places)
    if slot == "YEAR":
        return str(rng.randint(1948, 2012))
    if slot == "COMPANY":
        return f"{rng.choice(pool.stems)} {rng.choice(COMPANY_SUFFIXES)}"
    if slot == "UNI":
        stem = rng.choice(pool.stems)
        return rng.choice((f"University of {stem}", f"{stem} College", f"{stem} Institute of Technology"))
    table = {"JOB": JOBS, "INSTRUMENT": INSTRUMENTS, "ANIMAL": ANIMALS, "PET": PET_NAMES, "SUBJECT": SUBJECTS, "DAY": DAYS, "MONTH": MONTHS}
    return rng.choice(table[slot])


def _values(rng: random.Random, slots: Sequence[str], pool: _Pool, used: set[str]) -> dict[str, str]:
    """A value per slot, none used before in this context (so each answer is one thing)."""
    out = {}
    for slot in slots:
        value = _value(rng, slot, pool)
        for _ in range(20):
            if value not in used:
                break
            value = _value(rng, slot, pool)
        used.add(value)
        out[slot] = value
    return out


def render(template: str, values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """`template` filled in, and the character offset at which each slot's value starts."""
    text, starts, last = "", {}, 0
    for match in _SLOT.finditer(template):
        text += template[last:match.start()]
        starts[match.group(1)] = len(text)
        text += values[match.group(1)]
        last = match.end()
    return text + template[last:], starts


@dataclass
class _Person:
    name: str
    surname: str
    facts: dict[str, dict[str, str]]   # kind -> slot values


def _people(rng: random.Random, pool: _Pool, used: set[str]) -> list[_Person]:
    people: list[_Person] = []
    count = rng.randint(2, 4)
    while len(people) < count:
        surname = rng.choice(pool.last)
        if any(p.surname == surname for p in people):
            continue  # a surname alone names one person of the context
        kinds = rng.sample(KINDS, rng.randint(2, 4))
        people.append(_Person(f"{rng.choice(pool.first)} {surname}", surname, {k: _values(rng, FACTS[k].slots, pool, used) for k in kinds}))
    return people


def _sentences(rng: random.Random, people: list[_Person], pool: _Pool) -> list[tuple[str, tuple[str, str] | None, dict[str, int]]]:
    """(text, (person, fact kind) or None for a filler, slot offsets in the text), shuffled."""
    out = []
    for person in people:
        for kind, values in person.facts.items():
            # Now and then the surname alone: the question's full name must be matched to it.
            mention = person.surname if rng.random() < 0.2 else person.name
            text, starts = render(rng.choice(FACTS[kind].sentences), {**values, "P": mention})
            out.append((text, (person.name, kind), starts))
    fillers = rng.randint(14, 30) if rng.random() < LONG else rng.randint(0, 3)
    for _ in range(fillers):
        template = rng.choice(FILLERS)
        text, _ = render(template, {slot: _value(rng, slot, pool) for slot in _SLOT.findall(template)})
        out.append((text, None, {}))
    rng.shuffle(out)
    return out


def _question(rng: random.Random, people: list[_Person], pool: _Pool, used: set[str]) -> tuple[str, str, str | None]:
    """(person's name, fact kind, slot asked) for the question; slot None: unanswerable."""
    if rng.random() >= UNANSWERABLE:
        person = rng.choice(people)
        kind = rng.choice(sorted(person.facts))
        return person.name, kind, rng.choice(FACTS[kind].slots)
    if rng.random() < 0.5:  # someone the context does not mention
        surname = rng.choice(pool.last)
        if all(surname != p.surname for p in people):  # a shared surname could name someone present
            return f"{rng.choice(pool.first)} {surname}", rng.choice(KINDS), None
    person = rng.choice(people)
    missing = [k for k in KINDS if k not in person.facts]
    return person.name, rng.choice(missing), None


def qa_example(rng: random.Random, pool: _Pool, qid: str) -> dict:
    """One context with one question, as a row of task=qa (SQuAD v2.0 layout)."""
    used: set[str] = set()
    people = _people(rng, pool, used)
    sentences = _sentences(rng, people, pool)
    name, kind, slot = _question(rng, people, pool, used)
    fact = FACTS[kind]
    asked = slot or rng.choice(fact.slots)
    known = next((p.facts[kind] for p in people if p.name == name and kind in p.facts), None)
    values = known or _values(rng, fact.slots, pool, set(used))
    question, _ = render(rng.choice(fact.questions[asked]), {**values, "P": name})
    context, answer = "", {"text": [], "answer_start": []}
    for text, about, starts in sentences:
        if context:
            context += " "
        if slot is not None and about == (name, kind):
            answer = {"text": [values[slot]], "answer_start": [len(context) + starts[slot]]}
        context += text
    return {"id": qid, "context": context, "question": question, "answers": answer}


def _qa_splits(rng: random.Random) -> dict[str, list[dict]]:
    seen, held_out = _pools()
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        pools = (seen,) if split == "train" else (seen, held_out)
        splits[split] = [qa_example(rng, rng.choice(pools), f"{split}-{i}") for i in range(size)]
    return splits
