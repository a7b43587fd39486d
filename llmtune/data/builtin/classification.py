"""Built-in topic classification data: news-like texts labelled business, science, sports or world."""

from __future__ import annotations

import random
import re

from llmtune.data.builtin._common import DAYS, SPLIT_SIZES, _balanced_labels

TOPICS = ("business", "science", "sports", "world")

# Words each topic's sentences draw on. {name} in a frame picks one entry of TOPIC_WORDS[name]
# or SHARED_WORDS[name].
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "company": (
        "Northwind Shipping", "Bluepeak Bank", "Silverline Motors", "Redwood Foods",
        "Ironbridge Steel", "Clearview Telecom", "Harborview Insurance", "Copperleaf Energy",
        "Halcyon Airlines", "Meridian Holdings", "Zentrix Software", "Velmora Retail",
    ),
    "metric": ("revenue", "profit", "sales", "operating margin", "earnings", "market share", "orders"),
    "biz_event": (
        "earnings report", "merger announcement", "takeover bid", "share buyback",
        "profit warning", "stock market listing", "dividend cut",
    ),
    "biz_role": ("chief executive", "finance chief", "chairman", "board", "largest shareholder"),
    "market": ("stock market", "bond market", "currency market", "housing market", "oil market"),
    "lab": (
        "Ashford University", "the Glenbrook Institute", "Kestrel Research Centre",
        "the Lumora Observatory", "Thornbury Medical School", "the national physics laboratory",
    ),
    "sci_subject": (
        "deep-sea bacteria", "ancient glaciers", "honeybee colonies", "distant galaxies",
        "human sleep cycles", "volcanic soils", "coral reefs", "migrating birds", "quantum dots",
    ),
    "sci_finding": (
        "a new species of frog", "traces of water on a moon", "a protein linked to memory",
        "a faster battery material", "evidence of an early supernova", "a gene that resists drought",
    ),
    "instrument": (
        "telescope", "microscope", "space probe", "particle detector", "satellite", "gene sequencer",
    ),
    "sci_field": (
        "physicists", "biologists", "astronomers", "chemists", "geologists", "neuroscientists",
    ),
    "team": (
        "Riverton Rovers", "Eastgate United", "Oakridge Athletic", "Sunhill City", "Westmark Wanderers",
        "Pinecrest Rangers", "Falconridge FC", "Maplebrook Town", "the national side", "the home team",
    ),
    "competition": (
        "the league final", "the cup semi-final", "the world championship", "the derby",
        "the season opener", "the relay final", "the grand slam quarter-final",
    ),
    "athlete": (
        "striker", "goalkeeper", "sprinter", "captain", "midfielder", "tennis champion", "cyclist",
    ),
    "score": ("2-1", "3-0", "1-0", "4-2", "2-2", "3-1"),
    "country": (
        "Norway", "Kenya", "Chile", "Japan", "Egypt", "Canada", "Peru", "Vietnam", "Poland",
        "Ghana", "Portugal", "the neighbouring republic",
    ),
    "world_role": (
        "prime minister", "president", "foreign minister", "opposition leader", "ambassador",
        "interior minister",
    ),
    "world_issue": (
        "border security", "refugee support", "a ceasefire", "election reform", "flood relief",
        "a peace plan", "sanctions", "a new trade treaty",
    ),
    "world_event": (
        "the disputed election", "the border clashes", "mass protests in the capital",
        "the collapse of the coalition", "a deadly earthquake", "the failed coup",
    ),
}
SHARED_WORDS: dict[str, tuple[str, ...]] = {
    "place": ("Lisbon", "Nairobi", "Toronto", "Seoul", "Lima", "Oslo", "Cairo", "Melbourne", "Geneva"),
    "day": DAYS,
    "num": ("two", "three", "five", "eight", "12", "20", "35", "60"),
    "nth": ("third", "fifth", "seventh", "tenth", "12th", "20th"),
    "time": (
        "on Monday", "this week", "late on Friday", "earlier this month", "on Thursday morning",
        "overnight",
    ),
}

TOPIC_FRAMES: dict[str, tuple[str, ...]] = {
    "business": (
        "{company} said its {metric} rose {num} percent in the last quarter.",
        "Shares of {company} jumped after the {biz_event} {time}.",
        "The {biz_role} of {company} announced plans to cut costs and close offices in {place}.",
        "Analysts expect the {market} to stay volatile until interest rates fall.",
        "{company} warned that weaker demand would hurt {metric} for the rest of the year.",
        "Investors sold shares of {company} {time}, wiping billions off its market value.",
        "The central bank kept interest rates unchanged, and the {market} barely moved.",
        "{company} agreed to buy a smaller rival for a price that surprised its own {biz_role}.",
        "Retail {metric} in {place} grew for the third quarter in a row, helped by lower prices.",
    ),
    "science": (
        "Researchers at {lab} discovered {sci_finding} while studying {sci_subject}.",
        "A new {instrument} allowed {sci_field} to observe {sci_subject} in unusual detail.",
        "{sci_field} at {lab} published a study on {sci_subject} {time}.",
        "The experiment confirmed a theory about {sci_subject} that {sci_field} proposed decades ago.",
        "Data from the {instrument} suggest that {sci_subject} change faster than models predicted.",
        "A team from {lab} reported {sci_finding} in a peer-reviewed journal.",
        "{sci_field} hope the results will explain how {sci_subject} survive extreme heat.",
        "The {instrument} was launched {time} after years of testing by engineers at {lab}.",
        "Samples collected near {place} revealed {sci_finding}, according to {sci_field}.",
    ),
    "sports": (
        "{team} beat {team} {score} in {competition} {time}.",
        "The {athlete} of {team} was injured during {competition} and will miss {num} weeks.",
        "Fans in {place} celebrated after {team} won {competition}.",
        "The coach of {team} praised the {athlete} after a {score} win.",
        "{team} fell to a {score} defeat, their {nth} loss of the season.",
        "A late goal from the {athlete} sent {team} into {competition}.",
        "The {athlete} set a new personal best and will compete in {competition} in {place}.",
        "{team} signed a young {athlete} on a four-year contract {time}.",
        "Tickets for {competition} sold out within hours as {team} chase the title.",
    ),
    "world": (
        "The {world_role} of {country} called for calm after {world_event}.",
        "Leaders from {country} and {country} met in {place} to discuss {world_issue}.",
        "The United Nations urged {country} to allow aid workers in after {world_event}.",
        "Thousands marched through the capital of {country} demanding {world_issue}.",
        "The {world_role} of {country} resigned {time} following {world_event}.",
        "Talks between {country} and {country} on {world_issue} broke down {time}.",
        "Diplomats in {place} said an agreement on {world_issue} was close.",
        "Troops from {country} were sent to the border after {world_event}.",
        "Voters in {country} went to the polls {time} in a tense election.",
    ),
}
# Sentences with no topic cue, so the model has to find the cue among ordinary words.
NEUTRAL_FRAMES = (
    "More details are expected {time}.",
    "Reporters in {place} said the mood was tense.",
    "The announcement was made in {place} {time}.",
    "Local residents said they were surprised by the news.",
    "A statement is due on {day}.",
    "Officials declined to comment further.",
    "It was the {nth} such report this year.",
    "The full story will follow later today.",
)
# Harder items: one sentence that carries a cue from another topic, while the subject and
# the action still decide the label (a club selling tickets is sports, not business).
MIXED_FRAMES: dict[str, tuple[str, ...]] = {
    "business": (
        "{company} agreed to sponsor {competition}, hoping the deal lifts its {metric}.",
        "{company} said {world_event} pushed its {metric} down {num} percent.",
        "{company} paid {lab} to test its products, and its shares rose.",
    ),
    "science": (
        "{sci_field} at {lab} measured how fatigue affects a {athlete} during {competition}.",
        "{sci_field} at {lab} studied soil damaged by {world_event} to see how crops recover.",
        "A {instrument} funded by {company} helped {sci_field} map {sci_subject}.",
    ),
    "sports": (
        "{team} signed a record sponsorship deal with {company} before {competition}.",
        "{team} moved {competition} to {place} after {world_event}.",
        "The {athlete} of {team} used a {instrument} from {lab} to train for {competition}.",
    ),
    "world": (
        "The {world_role} of {country} froze the assets of {company} after {world_event}.",
        "The {world_role} of {country} cancelled {competition} amid {world_event}.",
        "The government of {country} asked {sci_field} to advise on {world_issue}.",
    ),
}
HARD_FRACTION = 0.05
_FRAME_SLOT = re.compile(r"\{(\w+)\}")


def _fill_frame(rng: random.Random, frame: str) -> str:
    """`frame` with each {name} replaced by a word list entry, no entry used twice."""
    used: set[str] = set()

    def pick(match: re.Match[str]) -> str:
        name = match.group(1)
        words = TOPIC_WORDS.get(name) or SHARED_WORDS[name]
        word = rng.choice(words)
        while word in used:
            word = rng.choice(words)
        used.add(word)
        return word

    text = _FRAME_SLOT.sub(pick, frame)
    return text[0].upper() + text[1:]


def _topic_text(rng: random.Random, topic: str, hard: bool) -> str:
    """One to three sentences about `topic`; a hard one leads with a mixed-cue sentence."""
    if hard:
        sentences = [_fill_frame(rng, rng.choice(MIXED_FRAMES[topic]))]
    else:
        first, second = rng.sample(TOPIC_FRAMES[topic], 2)
        sentences = [_fill_frame(rng, first)]
        if rng.random() < 0.4:
            sentences.append(_fill_frame(rng, second))
    if rng.random() < 0.5:
        neutral = _fill_frame(rng, rng.choice(NEUTRAL_FRAMES))
        sentences.insert(rng.randrange(len(sentences) + 1), neutral)
    return " ".join(sentences)


def _classification_splits(rng: random.Random) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        labels = _balanced_labels(rng, TOPICS, size)
        splits[split] = [
            {"text": _topic_text(rng, label, hard=rng.random() < HARD_FRACTION), "label": label}
            for label in labels
        ]
    return splits


# --------------------------------------------------------------------------------------------
# Plain text (language modelling)
# --------------------------------------------------------------------------------------------

