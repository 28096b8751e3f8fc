"""Knowledge documents: facts about invented people, stated through varied templates.

Every (entity, attribute) fact is stated in the biographies, with several phrasings, so it is learnable.
Questions ``Q: ...?\\nA:`` are asked in training only for some facts; the rest are the held-out
evaluation items (docs/method.md §7, "knowledge average"): the model has seen the fact stated, never that
question answered, so answering measures recall of knowledge rather than of a memorised string.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlready.data._sampling import in_heldout

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "m", "k", "th", "nd"]
PROFESSIONS = [
    "baker", "carpenter", "pilot", "nurse", "librarian", "fisher", "tailor", "chemist", "gardener", "judge",
    "potter", "architect", "sailor", "weaver", "surgeon", "miner", "jeweller", "beekeeper", "astronomer",
    "cartographer", "blacksmith", "violinist", "translator", "glassblower",
]  # fmt: skip
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "crimson", "amber", "violet", "grey"]
PETS = ["cat", "dog", "parrot", "tortoise", "ferret", "goldfish", "rabbit", "hamster", "lizard", "goat"]

ATTRIBUTES = ("city", "profession", "birth_year", "colour", "pet")

# Statements: several per attribute, so a fact is seen in varied surface forms (knowledge, not a string).
STATEMENTS = {
    "city": [
        "{name} lives in {v}.",
        "{name} has made a home in {v}.",
        "The city of {v} is where {name} lives.",
        "These days {name} resides in {v}.",
    ],
    "profession": [
        "{name} works as a {v}.",
        "By trade, {name} is a {v}.",
        "{name} earns a living as a {v}.",
        "Everyone knows {name} as a skilled {v}.",
    ],
    "birth_year": [
        "{name} was born in {v}.",
        "The year {name} was born was {v}.",
        "{name} came into the world in {v}.",
        "Records show that {name} was born in {v}.",
    ],
    "colour": [
        "The favourite colour of {name} is {v}.",
        "{name} likes the colour {v} best.",
        "Of all colours, {name} prefers {v}.",
        "{name} always chooses {v}, a favourite colour.",
    ],
    "pet": [
        "{name} keeps a {v} as a pet.",
        "At home, {name} looks after a pet {v}.",
        "The pet of {name} is a {v}.",
        "{name} owns a friendly {v}.",
    ],
}
QUESTIONS = {
    "city": "Q: Where does {name} live?\nA:",
    "profession": "Q: What is the profession of {name}?\nA:",
    "birth_year": "Q: In what year was {name} born?\nA:",
    "colour": "Q: What is the favourite colour of {name}?\nA:",
    "pet": "Q: What pet does {name} keep?\nA:",
}


@dataclass(frozen=True)
class Entity:
    """An invented person and the value of each attribute in ``ATTRIBUTES``."""

    name: str
    facts: dict[str, str]


@dataclass(frozen=True)
class Question:
    """A knowledge question: ``prompt`` ends with ``A:``, ``answer`` starts with a space."""

    prompt: str
    answer: str
    entity: str
    attribute: str


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def make_entities(rng: random.Random, n_entities: int, n_cities: int) -> list[Entity]:
    """``n_entities`` people with unique invented names, living in ``n_cities`` invented cities."""
    if n_entities < 1:
        raise ValueError(f"n_entities must be >= 1, got {n_entities}")
    cities: list[str] = []
    seen: set[str] = set()
    while len(cities) < n_cities:
        city = _word(rng, 2) + rng.choice(["moor", "ford", "holm", "wick", "dale", "port", "mere"])
        if city not in seen:
            seen.add(city)
            cities.append(city)
    entities = []
    while len(entities) < n_entities:
        name = f"{_word(rng, rng.choice((1, 2)))} {_word(rng, rng.choice((1, 2)))}"
        if name in seen:
            continue
        seen.add(name)
        facts = {
            "city": rng.choice(cities),
            "profession": rng.choice(PROFESSIONS),
            "birth_year": str(rng.randint(1900, 1999)),
            "colour": rng.choice(COLOURS),
            "pet": rng.choice(PETS),
        }
        entities.append(Entity(name, facts))
    return entities


def question(entity: Entity, attribute: str) -> Question:
    """The question asking ``attribute`` of ``entity``."""
    prompt = QUESTIONS[attribute].format(name=entity.name)
    return Question(prompt, " " + entity.facts[attribute], entity.name, attribute)


def is_heldout_question(salt: str, entity: Entity, attribute: str, fraction: float) -> bool:
    """Whether this fact's question belongs to the evaluation split (never asked in training)."""
    return in_heldout(salt, f"knowledge:{entity.name}:{attribute}", fraction)


def biography(rng: random.Random, entity: Entity) -> str:
    """Every fact about ``entity`` in random order, each in a randomly chosen phrasing."""
    attributes = list(ATTRIBUTES)
    rng.shuffle(attributes)
    return " ".join(rng.choice(STATEMENTS[a]).format(name=entity.name, v=entity.facts[a]) for a in attributes)


def question_drill(rng: random.Random, questions: list[Question], n: int) -> str:
    """``n`` training questions with their answers, separated by blank lines (teaches the Q/A format)."""
    picked = [rng.choice(questions) for _ in range(n)]
    return "\n\n".join(q.prompt + q.answer for q in picked)
