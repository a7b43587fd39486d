"""Built-in instruction data for supervised fine-tuning: `prompt` -> `response` pairs.

Every response follows from its prompt by a fixed rule (a lookup table, a small sum, sorting,
restating a list), so a small model can learn it and its held-out loss falls visibly. Lengths
are skewed like real instruction data: most pairs are one short question and answer, a few are
long list-to-sentences jobs whose item count is log-normal, and the longest of those run past
256 tokens (task.max_length then truncates them). That mix is what sequence packing is for.
"""

from __future__ import annotations

import math
import random

from llmtune.data.builtin._common import SPLIT_SIZES

CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Vietnam", "Hanoi"), ("Canada", "Ottawa"),
    ("Spain", "Madrid"), ("Germany", "Berlin"), ("Chile", "Santiago"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Ghana", "Accra"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Colombia", "Bogota"), ("Finland", "Helsinki"), ("Ecuador", "Quito"),
    ("Senegal", "Dakar"), ("Italy", "Rome"), ("Sweden", "Stockholm"), ("Hungary", "Budapest"),
    ("Morocco", "Rabat"), ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"), ("Cuba", "Havana"),
)  # fmt: skip
OPPOSITES = (
    ("hot", "cold"), ("early", "late"), ("open", "closed"), ("light", "dark"), ("full", "empty"),
    ("fast", "slow"), ("high", "low"), ("strong", "weak"), ("wide", "narrow"), ("rich", "poor"),
    ("loud", "quiet"), ("young", "old"), ("wet", "dry"), ("hard", "soft"), ("first", "last"),
    ("inside", "outside"), ("above", "below"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
)  # fmt: skip
PLURALS = (
    ("city", "cities"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("leaf", "leaves"),
    ("tooth", "teeth"), ("knife", "knives"), ("person", "people"), ("bus", "buses"), ("story", "stories"),
    ("foot", "feet"), ("wolf", "wolves"), ("glass", "glasses"), ("party", "parties"), ("goose", "geese"),
)  # fmt: skip
ITEMS = (
    "apple", "loaf of bread", "bottle of milk", "lemon", "onion", "tin of beans", "bag of rice",
    "carrot", "jar of honey", "box of tea", "pear", "bar of soap", "potato", "egg", "tomato",
)  # fmt: skip
TEAMS = (
    "Riverton Rovers", "Eastgate United", "Oakridge Athletic", "Sunhill City", "Westmark Wanderers",
    "Pinecrest Rangers", "Falconridge FC", "Maplebrook Town", "Harbor Lions", "Northwind Stars",
)  # fmt: skip
WORD_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# The mix, by kind: short questions dominate; list jobs make the long tail.
KIND_WEIGHTS = (("capital", 22), ("opposite", 18), ("plural", 14), ("sum", 18), ("sort", 14), ("shopping", 8), ("results", 6))


def _capital(rng: random.Random) -> tuple[str, str]:
    country, city = rng.choice(CAPITALS)
    question = rng.choice(("What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"))
    return question.format(c=country), f"The capital of {country} is {city}."


def _opposite(rng: random.Random) -> tuple[str, str]:
    word, other = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, other = other, word
    return f'What is the opposite of "{word}"?', f'The opposite of "{word}" is "{other}".'


def _plural(rng: random.Random) -> tuple[str, str]:
    word, plural = rng.choice(PLURALS)
    return f"Give the plural of the word {word}.", f"The plural of {word} is {plural}."


def _sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10), rng.randrange(10)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def _sort(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 9))
    joined = ", ".join(map(str, numbers))
    return f"Sort these numbers from smallest to largest: {joined}.", ", ".join(map(str, sorted(numbers))) + "."


def _count(rng: random.Random, median: float, cap: int) -> int:
    """A log-normal item count: mostly a handful, now and then dozens (the long tail)."""
    return max(2, min(cap, round(rng.lognormvariate(math.log(median), 0.7))))


def _shopping(rng: random.Random) -> tuple[str, str]:
    entries = [(rng.choice(ITEMS), rng.randint(1, 9)) for _ in range(_count(rng, 3, 14))]
    listed = ", ".join(f"{item} x{n}" for item, n in entries)
    steps = [f"{i}. Buy {WORD_NUMBERS[n]} {item if n == 1 else item + 's'}." for i, (item, n) in enumerate(entries, start=1)]
    return f"Turn this shopping list into numbered steps: {listed}.", "\n".join(steps)


def _results(rng: random.Random) -> tuple[str, str]:
    lines, sentences = [], []
    for _ in range(_count(rng, 2, 9)):
        home, away = rng.sample(TEAMS, 2)
        x, y = rng.randrange(5), rng.randrange(5)
        lines.append(f"{home} {x}-{y} {away}")
        if x > y:
            sentences.append(f"{home} beat {away} {x}-{y}.")
        elif x < y:
            sentences.append(f"{away} won {y}-{x} away at {home}.")
        else:
            sentences.append(f"{home} and {away} drew {x}-{y}.")
    return "Write one sentence for each match result:\n" + "\n".join(lines), " ".join(sentences)


MAKERS = {"capital": _capital, "opposite": _opposite, "plural": _plural, "sum": _sum, "sort": _sort, "shopping": _shopping, "results": _results}


def _sft_splits(rng: random.Random) -> dict[str, list[dict]]:
    kinds = [k for k, _ in KIND_WEIGHTS]
    weights = [w for _, w in KIND_WEIGHTS]
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows = []
        for kind in rng.choices(kinds, weights, k=size):
            prompt, response = MAKERS[kind](rng)
            rows.append({"prompt": prompt, "response": response})
        splits[split] = rows
    return splits

