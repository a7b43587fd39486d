"""Built-in sequence-to-sequence data: `source` -> `target` pairs that copying cannot solve.

- "translation": English sentences into Veltish, a rule-based synthetic language. Every word
  has its own Veltish word (nouns take -i in the plural, verbs -ra in the past), and the order
  changes: adjectives follow their noun, the determiner follows both, the object comes before
  the verb, prepositions become postpositions (English "the old dog saw a red ball near the
  river" is Veltish "vardo ulm ka tusel reko na lirom ka pel tenura"). No target word is an
  English word, so copying the input scores about zero BLEU; a model has to learn the lexicon
  and the reordering.
- "summarization": short multi-sentence reports (a match, a company's results, a train delay)
  whose one-line summary states the key facts. The facts are spread over several sentences,
  in shuffled order among filler sentences, and the summary needs an inference the report never
  writes out (who won from the score; whether revenue rose or fell from two numbers). Copying
  the report scores a low ROUGE-L (its F1 is dragged down by the filler).

Generation uses only a private `random.Random(seed)` and tuples, so the rows are the same in
every process whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import random

from llmtune.data.builtin._common import DAYS, MONTHS, SPLIT_SIZES

# --------------------------------------------------------------------------------------------
# Translation: English -> Veltish
# --------------------------------------------------------------------------------------------

NOUNS = (
    ("dog", "vardo"), ("cat", "mizu"), ("bird", "pilka"), ("farmer", "grodan"), ("child", "tesko"),
    ("teacher", "lomar"), ("horse", "kavel"), ("goat", "kozel"), ("river", "lirom"), ("house", "domek"),
    ("tree", "arbol"), ("ball", "reko"), ("boat", "navi"), ("garden", "hortel"), ("bridge", "pontar"),
    ("village", "selo"), ("apple", "jabko"), ("letter", "pismo"), ("king", "regor"), ("baker", "pekta"),
)  # fmt: skip
ADJECTIVES = (
    ("old", "ulm"), ("young", "nov"), ("red", "tusel"), ("big", "grun"), ("small", "mali"),
    ("happy", "radi"), ("quiet", "tiko"), ("green", "zelo"), ("tall", "visok"), ("clever", "umni"),
)  # fmt: skip
# English base, third person singular present, past; Veltish stem.
VERBS = (
    ("see", "sees", "saw", "tenu"), ("follow", "follows", "followed", "sledo"), ("find", "finds", "found", "nakti"),
    ("help", "helps", "helped", "pomo"), ("carry", "carries", "carried", "nosa"), ("watch", "watches", "watched", "gleda"),
    ("draw", "draws", "drew", "risu"), ("like", "likes", "liked", "volim"),
)  # fmt: skip
PREPOSITIONS = (("near", "pel"), ("behind", "zad"), ("under", "podo"), ("across", "preko"), ("inside", "vuno"))
DETERMINERS = (("the", "ka"), ("a", "na"))
PLURAL, PAST = "i", "ra"


def _noun_phrase(rng: random.Random) -> tuple[list[str], list[str], bool]:
    """(English words, Veltish words, plural) of a noun phrase: det (adj) noun."""
    noun, v_noun = rng.choice(NOUNS)
    plural = rng.random() < 0.3
    if plural:
        noun, v_noun = ("children" if noun == "child" else noun + "s"), v_noun + PLURAL
    det, v_det = ("the", "ka") if plural else rng.choice(DETERMINERS)
    english, veltish = [det], [v_noun]
    if rng.random() < 0.6:
        adj, v_adj = rng.choice(ADJECTIVES)
        english.append(adj)
        veltish.append(v_adj)
    return english + [noun], veltish + [v_det], plural


def _translation_pair(rng: random.Random) -> tuple[str, str]:
    subject, v_subject, plural = _noun_phrase(rng)
    obj, v_obj, _ = _noun_phrase(rng)
    base, third, past, stem = rng.choice(VERBS)
    tense_past = rng.random() < 0.5
    verb = past if tense_past else (base if plural else third)
    v_verb = stem + PAST if tense_past else stem
    english, veltish = subject + [verb] + obj, v_subject + v_obj
    if rng.random() < 0.5:  # a place: English preposition first, Veltish postposition after
        prep, v_prep = rng.choice(PREPOSITIONS)
        place, v_place, _ = _noun_phrase(rng)
        english += [prep] + place
        veltish += v_place + [v_prep]
    english[0] = english[0].capitalize()
    return " ".join(english) + ".", " ".join(veltish + [v_verb]) + "."


def _translation_splits(rng: random.Random) -> dict[str, list[dict]]:
    return {split: [dict(zip(("source", "target"), _translation_pair(rng), strict=True)) for _ in range(size)]
            for split, size in SPLIT_SIZES.items()}


# --------------------------------------------------------------------------------------------
# Summarization: reports -> one line of key facts
# --------------------------------------------------------------------------------------------

TEAMS = (
    "Riverton Rovers", "Eastgate United", "Oakridge Athletic", "Sunhill City", "Westmark Wanderers",
    "Pinecrest Rangers", "Falconridge Town", "Maplebrook Albion", "Harbor Lions", "Northwind Stars",
)  # fmt: skip
COMPANIES = ("Acme Foods", "Bluewave Energy", "Cedar Bank", "Delta Motors", "Everline Telecom", "Fjord Shipping", "Granite Steel", "Helix Pharma")
TOWNS = ("Ashford", "Bramley", "Carlow", "Dunmore", "Elmsworth", "Fairhaven", "Glenby", "Hollins", "Ivybridge", "Kelso")
CAUSES = ("a signal fault", "flooding on the line", "a broken-down train", "staff shortages", "a power failure", "fallen trees")
FILLER = (
    "The weather stayed dry for most of the day.",
    "Local radio covered the story throughout the afternoon.",
    "Officials said they would publish more details next week.",
    "Several residents shared photos on social media.",
    "The town council met later that evening.",
    "A spokesperson thanked everyone involved for their patience.",
    "Similar events took place in other regions this year.",
    "Reporters gathered outside the main entrance.",
    "The announcement came shortly after nine o'clock.",
    "Many people said they had expected the news.",
)  # fmt: skip


def _match(rng: random.Random) -> tuple[list[str], str]:
    home, away = rng.sample(TEAMS, 2)
    x, y = rng.randrange(5), rng.randrange(5)
    day = rng.choice(DAYS)
    facts = [
        f"{home} hosted {away} on {day}.",
        f"The crowd of {rng.randint(3, 40)},000 saw a lively game.",
        f"The final score was {x}-{y}.",
        f"{rng.choice((home, away))} had more of the ball in the second half.",
    ]
    if x > y:
        summary = f"{home} beat {away} {x}-{y} on {day}."
    elif x < y:
        summary = f"{away} won {y}-{x} away at {home} on {day}."
    else:
        summary = f"{home} and {away} drew {x}-{y} on {day}."
    return facts, summary


def _results(rng: random.Random) -> tuple[list[str], str]:
    company, month = rng.choice(COMPANIES), rng.choice(MONTHS)
    before, after = rng.sample(range(20, 99), 2)
    facts = [
        f"{company} published its results for {month} on Tuesday.",
        f"A year earlier the company had reported revenue of {before} million.",
        f"This time revenue came to {after} million.",
        f"Its shares moved by {rng.randint(1, 9)} percent in early trading.",
    ]
    direction = "rose" if after > before else "fell"
    return facts, f"{company} revenue {direction} to {after} million in {month}."


def _delay(rng: random.Random) -> tuple[list[str], str]:
    origin, destination = rng.sample(TOWNS, 2)
    minutes, cause, day = rng.choice((15, 20, 30, 45, 60, 90)), rng.choice(CAUSES), rng.choice(DAYS)
    facts = [
        f"Trains from {origin} ran late on {day}.",
        f"Passengers travelling to {destination} waited about {minutes} minutes.",
        f"The operator blamed {cause}.",
        "Some services were replaced by buses.",
    ]
    return facts, f"Trains from {origin} to {destination} were {minutes} minutes late on {day} because of {cause}."


REPORTS = (_match, _results, _delay)


def _summary_pair(rng: random.Random) -> tuple[str, str]:
    facts, summary = rng.choice(REPORTS)(rng)
    sentences = facts + rng.sample(FILLER, rng.randint(2, 4))
    rng.shuffle(sentences)  # the key facts can come anywhere, the lead included
    return " ".join(sentences), summary


def _summarization_splits(rng: random.Random) -> dict[str, list[dict]]:
    return {split: [dict(zip(("source", "target"), _summary_pair(rng), strict=True)) for _ in range(size)]
            for split, size in SPLIT_SIZES.items()}


# The kinds this module generates, by name (llmtune.data.builtin dispatches on it).
SEQ2SEQ_KINDS = {"summarization": _summarization_splits, "translation": _translation_splits}
