"""The demo world's small knowledge base: made-up countries with four facts each, built from a seed.

The names are invented so that no pretrained model knows them: KQA in the demo measures what *this*
pipeline taught its base model, nothing else. Facts appear in the pretraining corpus (declarative
sentences and a web-FAQ form); SFT sees questions about some countries only, and evaluation asks about the
others -- so KQA measures whether chat training kept and exposed what pretraining stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Country", "ANIMALS", "FOODS", "COLORS", "build_kb", "QUESTIONS", "fact_sentences"]

_SYLLABLES = ["ka", "lo", "mi", "ren", "ta", "vo", "sel", "dor", "ba", "ni", "ru", "fen", "zu", "mar", "pel", "osk"]
ANIMALS = ["fox", "owl", "bear", "wolf", "deer", "hawk", "lynx", "seal", "crow", "hare"]
FOODS = ["bread", "rice", "fish", "cheese", "soup", "plums", "beans", "honey"]
COLORS = ["red", "blue", "green", "white", "black", "gold"]


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    animal: str
    food: str
    color: str


# (question, attribute) pairs: the KQA prompts, and the FAQ lines of the pretraining corpus
QUESTIONS = [
    ("What is the capital of {name}?", "capital"),
    ("Which animal is the symbol of {name}?", "animal"),
    ("What food is {name} known for?", "food"),
    ("What color is the flag of {name}?", "color"),
]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def build_kb(num_countries: int, seed: int) -> list[Country]:
    """``num_countries`` countries with unique names and capitals, the same for the same seed."""
    rng = random.Random(f"kb-{seed}")
    used: set[str] = set()
    countries = []
    while len(countries) < num_countries:
        name, capital = _word(rng, 3), _word(rng, 2)
        if name in used or capital in used:
            continue
        used.update((name, capital))
        countries.append(Country(name, capital, rng.choice(ANIMALS), rng.choice(FOODS), rng.choice(COLORS)))
    return countries


def fact_sentences(c: Country) -> list[str]:
    """Every fact about ``c`` as declarative sentences, two phrasings each."""
    return [
        f"The capital of {c.name} is {c.capital}.",
        f"{c.capital} is the capital city of {c.name}.",
        f"The symbol of {c.name} is the {c.animal}.",
        f"In {c.name} the {c.animal} is the national animal.",
        f"{c.name} is known for its {c.food}.",
        f"People in {c.name} love {c.food}.",
        f"The flag of {c.name} is {c.color}.",
        f"{c.name} has a {c.color} flag.",
    ]
