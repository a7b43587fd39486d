"""Built-in NER data: template sentences with IOB2 tags over PER, LOC, ORG and MISC."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from llmtune.data.builtin._common import (
    DAYS,
    MONTHS,
    NUMBERS,
    SPLIT_SIZES,
    _split_held_out,
)

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chen", "Sofia",
    "Ahmed", "Emma", "Ravi", "Nadia", "Lucas", "Ingrid", "Tomas", "Amara", "Daniel", "Yuki",
    "Carlos", "Elena", "Samuel", "Leila", "Viktor", "Grace", "Mateo", "Hana", "Oscar", "Priya",
    "Jonas", "Zainab", "Felix", "Clara", "Kwame", "Irene", "Marco", "Ayesha", "Stefan", "Lucia",
    "Omar", "Freya", "Andrei", "Mei", "Hugo", "Rosa", "Tariq", "Julia", "Nikolai", "Chloe",
    "Diego", "Anya", "Patrick", "Nia", "Emil", "Beatriz", "Joseph", "Sana", "Arjun", "Helen",
)  # fmt: skip
LAST_NAMES = (
    "Okafor", "Lindqvist", "Moreau", "Tanaka", "Petrova", "Alvarez", "Haddad", "Murphy",
    "Nakamura", "Rossi", "Kowalski", "Mensah", "Fischer", "van der Berg", "Silva", "Novak",
    "Castillo", "Brennan", "Iyer", "Horvath", "Schmidt", "Dubois", "Adeyemi", "Larsen",
    "de la Cruz", "Popescu", "Yamamoto", "Walsh", "Ferreira", "Kim", "Osei", "Bauer", "Romero",
    "Sato", "Jensen", "Greco", "O'Brien", "Chowdhury", "Meyer", "Varga", "Santos", "Hughes",
    "Abara", "Eriksen", "Costa", "Wojcik", "Park", "Nguyen", "Moretti", "Keller", "Afolabi",
    "Marsh", "Quinn", "Lindgren", "Barros", "Kaplan", "Suzuki", "ten Brink", "Reyes", "Hoffman",
)  # fmt: skip
PLACES = (
    "Paris", "Lagos", "Nairobi", "Lima", "Oslo", "Cairo", "Hanoi", "Toronto", "Melbourne",
    "Madrid", "Berlin", "Mumbai", "Santiago", "Vienna", "Dublin", "Seoul", "Accra", "Lisbon",
    "Warsaw", "Athens", "Bogota", "Manila", "Helsinki", "Prague", "Quito", "Dakar", "Osaka",
    "Geneva", "Montreal", "Kyoto", "Bristol", "Marseille", "Porto", "Krakow", "Tunis", "Perth",
    "Denver", "Chicago", "Houston", "Glasgow", "New Zealand", "South Africa", "Buenos Aires",
    "Cape Town", "Rio de Janeiro", "Sri Lanka", "Hong Kong", "San Francisco", "New York",
    "Costa Rica", "Saudi Arabia", "Abu Dhabi", "Kuala Lumpur", "Mexico City", "Tel Aviv",
    "Las Vegas", "Salt Lake City", "Addis Ababa", "North Carolina", "Kenya", "Brazil", "Norway",
    "Canada", "Japan", "Portugal", "Chile", "Ghana", "Iceland", "Peru", "Morocco", "Vietnam",
    "Finland", "Austria", "Egypt", "Scotland",
)  # fmt: skip
# Invented organisation stems, combined below with a suffix that says what kind of body it is.
ORG_STEMS = (
    "Northwind", "Bluepeak", "Silverline", "Redwood", "Ironbridge", "Greenfield", "Brightwater",
    "Stonegate", "Clearview", "Oakridge", "Riverton", "Sunhill", "Westmark", "Eastgate",
    "Copperleaf", "Maplebrook", "Harborview", "Pinecrest", "Falconridge", "Cedarline", "Amberway",
    "Frostvale", "Kestrel", "Halcyon", "Meridian", "Tidewater", "Larkspur", "Norvale", "Quillon",
    "Velmora", "Zentrix", "Orbisa", "Trelane", "Castora", "Helion", "Vantor", "Brisco",
    "Dunmore", "Elmstead", "Foxhollow", "Glenbrook", "Hollins", "Juniper", "Kingsley", "Lumora",
    "Marlow", "Nexora", "Ashford", "Pellar", "Rowan", "Sterling", "Thornbury", "Umbra",
    "Valecrest", "Whitcombe", "Yarrow", "Zephyr", "Aldren", "Bramwell", "Corvin",
)  # fmt: skip
COMPANY_SUFFIXES = (
    "Shipping Company", "Bank", "Group", "Motors", "Energy", "Airlines", "Foods", "Holdings",
    "Insurance", "Pharmaceuticals", "Media", "Software", "Steel", "Telecom", "Capital",
)  # fmt: skip
CLUB_SUFFIXES = ("FC", "United", "Rovers", "Athletic", "Wanderers", "Rangers", "Town")
INSTITUTE_SUFFIXES = (
    "University", "Institute of Technology", "Research Centre", "Medical School", "Observatory",
    "Foundation",
)  # fmt: skip
NATIONALITIES = (
    "Italian", "Brazilian", "Kenyan", "Japanese", "Canadian", "Norwegian", "German", "Mexican",
    "Indian", "Nigerian", "French", "Spanish", "Polish", "Chilean", "Egyptian", "Irish",
    "Swedish", "Turkish", "Korean", "Australian", "Dutch", "Greek", "Peruvian", "Ghanaian",
    "Vietnamese", "Portuguese", "Scottish", "Finnish", "Moroccan", "Argentine",
)  # fmt: skip
EVENTS = (
    "World Cup", "Summer Olympics", "Winter Olympics", "Climate Summit", "Harvest Festival",
    "Northern Lights Marathon", "Global Tech Expo", "Spring Regatta", "Coastal Jazz Festival",
    "Open Championship", "Island Games", "Science Week", "Grand Prix", "Pacific Cup",
    "Continental Games", "Autumn Book Fair", "Alpine Rally", "River Film Festival",
    "Desert Challenge", "Harbour Half Marathon", "Lunar Expo", "Midsummer Games",
)  # fmt: skip
PRODUCTS = (
    "Nimbus X2", "Aurora Pad", "Vega Pro", "Pulse Mini", "Orion 5", "Lumen Note", "Atlas Drive",
    "Nova Watch", "Cobalt S", "Echo Air", "Zenith Book", "Quasar Lite", "Terra One",
    "Sparrow Phone", "Polaris Max", "Drift Cam", "Helix Buds", "Aria Tab", "Comet GT",
    "Solis Panel", "Tundra Bike", "Kite Speaker",
)  # fmt: skip

# Slot name -> entity type; slots not listed (DAY, MONTH, NUM) are filled with O-tagged words.
SLOT_TYPES = {
    "PER": "PER",
    "LOC": "LOC",
    "COMPANY": "ORG",
    "CLUB": "ORG",
    "INST": "ORG",
    "NAT": "MISC",
    "EVENT": "MISC",
    "PRODUCT": "MISC",
}

# Tokens are space-separated, punctuation included; {SLOT} marks where a name goes.
NER_TEMPLATES = (
    # news
    "{PER} , a spokesperson for {COMPANY} , said the talks in {LOC} would resume on {DAY} .",
    "Officials in {LOC} confirmed that {NUM} families were moved to safety after the storm .",
    "The {NAT} government announced new rules for online shops on {DAY} .",
    "{PER} told reporters that {COMPANY} had no plans to leave {LOC} .",
    "Protesters gathered outside the offices of {COMPANY} in {LOC} .",
    "The minister met {PER} in {LOC} to discuss the trade agreement .",
    "Police said the bridge would stay closed until the end of {MONTH} .",
    "Voters in {LOC} will choose a new mayor next {MONTH} .",
    "{PER} , who was born in {LOC} , has worked as a journalist for {NUM} years .",
    "The {NAT} ambassador arrived in {LOC} on {DAY} morning .",
    "Heavy snow closed several roads in the north of {LOC} overnight .",
    "The city council has not yet published its budget for next year .",
    # travel
    "We spent {NUM} days in {LOC} before taking the train to {LOC} .",
    "The cheapest flights to {LOC} leave every {DAY} .",
    "{PER} recommends visiting {LOC} in early {MONTH} , when the crowds are smaller .",
    "Our guide , {PER} , grew up in a small village near {LOC} .",
    "The ferry from {LOC} was cancelled because of strong winds .",
    "Many visitors to {LOC} rent bicycles to explore the old town .",
    "The hotel was full , so we stayed with friends outside the city .",
    "{COMPANY} added a direct route between {LOC} and {LOC} this {MONTH} .",
    "A group of {NAT} tourists missed the last bus back to the harbour .",
    "Thousands of people travel to {LOC} every year for the {EVENT} .",
    # business
    "{COMPANY} reported a {NUM} percent rise in quarterly profit .",
    "Shares of {COMPANY} fell after {PER} stepped down as chief executive .",
    "{COMPANY} agreed to buy {COMPANY} for an undisclosed sum .",
    "The company plans to open a new factory in {LOC} next year .",
    "{PER} , the founder of {COMPANY} , unveiled the {PRODUCT} on {DAY} .",
    "Sales of the {PRODUCT} were stronger than analysts had expected .",
    "{COMPANY} hired {PER} to lead its expansion into {LOC} .",
    "Investors worried that rising costs would hurt smaller retailers .",
    "The board of {COMPANY} will meet on {DAY} to approve the budget .",
    "{NAT} exporters gained from the weaker currency last quarter .",
    "A new office of {COMPANY} opened in {LOC} with {NUM} staff .",
    "According to {PER} , demand for the {PRODUCT} doubled in {MONTH} .",
    # sport
    "{PER} scored twice as {CLUB} beat {CLUB} on {DAY} .",
    "The {NAT} striker {PER} signed a new contract with {CLUB} .",
    "{PER} won the final at the {EVENT} in {LOC} .",
    "{CLUB} will play their home games in {LOC} next season .",
    "The match was postponed because of heavy rain .",
    "{PER} finished third in the race , behind two runners from {LOC} .",
    "Fans travelled from {LOC} to watch the {EVENT} .",
    "{PER} has been named captain of the team for the {EVENT} .",
    "The coach said the players needed more time to recover .",
    "{CLUB} sacked their manager after {NUM} defeats in a row .",
    "The {NAT} team arrived in {LOC} a week before the {EVENT} .",
    # science
    "Researchers at {INST} have found a cheaper way to store solar energy .",
    "{PER} and colleagues at {INST} published the results on {DAY} .",
    "The new telescope in {LOC} will begin observations in {MONTH} .",
    "A team led by {PER} tested the {PRODUCT} in the mountains of {LOC} .",
    "Scientists presented their findings at the {EVENT} in {LOC} .",
    "The study followed {NUM} patients over five years .",
    "{INST} received a grant to study coral reefs near {LOC} .",
    "According to {PER} , the {NAT} space agency will launch the probe next year .",
    "The vaccine trial in {LOC} was paid for by {INST} .",
    "Engineers from {INST} and {COMPANY} built the prototype together .",
    "The samples were frozen and sent to a laboratory for testing .",
    "{PER} , a biologist at {INST} , warned that the lake is drying up .",
)


@dataclass(frozen=True)
class _NamePool:
    """The names one split may use, per list."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    places: tuple[str, ...]
    org_stems: tuple[str, ...]
    nationalities: tuple[str, ...]
    events: tuple[str, ...]
    products: tuple[str, ...]


def _name_pools() -> tuple[_NamePool, _NamePool]:
    """(seen, held_out) pools: the held-out one holds the names training never sees."""
    lists = (FIRST_NAMES, LAST_NAMES, PLACES, ORG_STEMS, NATIONALITIES, EVENTS, PRODUCTS)
    pairs = [_split_held_out(names) for names in lists]
    seen = _NamePool(*(pair[0] for pair in pairs))
    held_out = _NamePool(*(pair[1] for pair in pairs))
    return seen, held_out


def _draw_name(rng: random.Random, slot: str, pool: _NamePool) -> str:
    """One surface string for `slot`, possibly several words long."""
    if slot == "PER":
        # A few people get a middle name, so three- and four-token names also occur.
        middle = f" {rng.choice(pool.first)}" if rng.random() < 0.1 else ""
        return f"{rng.choice(pool.first)}{middle} {rng.choice(pool.last)}"
    if slot == "LOC":
        return rng.choice(pool.places)
    if slot == "COMPANY":
        return f"{rng.choice(pool.org_stems)} {rng.choice(COMPANY_SUFFIXES)}"
    if slot == "CLUB":
        return f"{rng.choice(pool.org_stems)} {rng.choice(CLUB_SUFFIXES)}"
    if slot == "INST":
        stem, suffix = rng.choice(pool.org_stems), rng.choice(INSTITUTE_SUFFIXES)
        if suffix == "University" and rng.random() < 0.5:
            return f"University of {stem}"
        return f"{stem} {suffix}"
    if slot == "NAT":
        return rng.choice(pool.nationalities)
    if slot == "EVENT":
        return rng.choice(pool.events)
    if slot == "PRODUCT":
        return rng.choice(pool.products)
    return rng.choice({"DAY": DAYS, "MONTH": MONTHS, "NUM": NUMBERS}[slot])


def _iob2(entity_type: str | None, length: int) -> list[str]:
    if entity_type is None:
        return ["O"] * length
    return [f"B-{entity_type}"] + [f"I-{entity_type}"] * (length - 1)


def _ner_sentence(rng: random.Random, template: str, pools: Sequence[_NamePool]) -> dict:
    """Fill `template`; each name comes from one of `pools`, chosen at random per slot."""
    tokens: list[str] = []
    tags: list[str] = []
    used: set[str] = set()
    for word in template.split():
        if not (word.startswith("{") and word.endswith("}")):
            tokens.append(word)
            tags.append("O")
            continue
        slot = word[1:-1]
        name = _draw_name(rng, slot, rng.choice(pools))
        # Two slots of one sentence ("from {LOC} to {LOC}") should not name the same thing.
        while name in used:
            name = _draw_name(rng, slot, rng.choice(pools))
        used.add(name)
        parts = name.split()
        tokens.extend(parts)
        tags.extend(_iob2(SLOT_TYPES.get(slot), len(parts)))
    return {"tokens": tokens, "tags": tags}


def _ner_splits(rng: random.Random) -> dict[str, list[dict]]:
    seen, held_out = _name_pools()
    # Evaluation mixes known and unseen names half and half: a model that only memorised names
    # loses about half the entities.
    pools_by_split = {"train": (seen,), "validation": (seen, held_out), "test": (seen, held_out)}
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        pools = pools_by_split[split]
        splits[split] = [_ner_sentence(rng, rng.choice(NER_TEMPLATES), pools) for _ in range(size)]
    return splits


# --------------------------------------------------------------------------------------------
# Topic classification
# --------------------------------------------------------------------------------------------

