"""Seeded generator for the bundled demo chat dataset and part of the tokenizer corpus.

Every record is an OpenAI-style chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``.
Each record also carries two extra keys so results can be scored exactly:

* ``"task"``: the task family (``arithmetic``, ``uppercase``, ``lowercase``, ``reverse``,
  ``fact``, or ``multi_turn/<family>``).
* ``"answer"``: the gold answer for the *final* assistant turn (a short string such as
  ``"92"``, ``"Marrowick"`` or the converted phrase). The final assistant message always
  contains it verbatim (for the arithmetic family as ``"The answer is <n>."``).

The knowledge base of fictional countries below is invented but internally consistent,
so a model can only learn it from this data. Regenerate the bundled files with::

    python -m novalign.data.demo
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from novalign.data.io import write_jsonl

__all__ = [
    "COUNTRIES",
    "FACT_FIELDS",
    "make_demo_conversations",
    "make_corpus_text",
    "ASSETS_DIR",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

Message = dict[str, str]
Record = dict[str, Any]

# name -> facts. Invented places; consistent across every generated record.
COUNTRIES: dict[str, dict[str, str]] = {
    "Veloria": {"capital": "Marrowick", "currency": "the velor", "language": "Velorian", "river": "the Ambersh"},
    "Quenmark": {"capital": "Ostelby", "currency": "the quen", "language": "Quennish", "river": "the Tallow"},
    "Arvandy": {"capital": "Sel Harrow", "currency": "the arvan crown", "language": "Arvani", "river": "the Idrel"},
    "Brisolan": {"capital": "Port Caddow", "currency": "the brisk", "language": "Brisolese", "river": "the Moorn"},
    "Dunhelm": {"capital": "Greyfold", "currency": "the helm mark", "language": "Dunnic", "river": "the Saffer"},
    "Elsward": {"capital": "Lindqvale", "currency": "the els", "language": "Elswardic", "river": "the Coriel"},
    "Faroth": {"capital": "Tessaly", "currency": "the farothi pound", "language": "Farothi", "river": "the Wend"},
    "Gallowmere": {"capital": "Kestrin", "currency": "the gall", "language": "Mereish", "river": "the Obbin"},
    "Hollandra": {"capital": "Vimsey", "currency": "the holla", "language": "Hollandric", "river": "the Pellow"},
    "Istrova": {"capital": "Narrowgate", "currency": "the istro", "language": "Istrovan", "river": "the Kasna"},
    "Jorvale": {"capital": "Ashcombe", "currency": "the jor", "language": "Jorvish", "river": "the Lune"},
    "Kelmoria": {"capital": "Bramwell", "currency": "the kelm", "language": "Kelmori", "river": "the Rusk"},
    "Lurenth": {"capital": "Oddington", "currency": "the lur", "language": "Lurenthian", "river": "the Velle"},
    "Morvast": {"capital": "Cindral", "currency": "the morvast shilling", "language": "Morvic", "river": "the Escar"},
}

# field -> (question templates, answer template). ``{c}`` is the country, ``{v}`` the value.
FACT_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "capital": (
        ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."),
        "The capital of {c} is {v}.",
    ),
    "currency": (
        ("What currency is used in {c}?", "What is the currency of {c}?", "Which money do people use in {c}?"),
        "The currency of {c} is {v}.",
    ),
    "language": (
        ("What language is spoken in {c}?", "Which language do most people in {c} speak?"),
        "Most people in {c} speak {v}.",
    ),
    "river": (
        ("What is the longest river in {c}?", "Which river is the longest in {c}?"),
        "The longest river in {c} is {v}.",
    ),
}

_WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "lantern", "cloud", "maple", "harbor", "pencil", "garden", "window",
    "copper", "meadow", "candle", "forest", "ladder", "orange", "violin", "basket", "comet", "island",
    "thunder", "pepper", "saddle", "mirror", "falcon", "kettle", "marble", "velvet", "anchor", "bridge",
    "silver", "tunnel", "rocket", "puzzle", "walnut", "feather", "glacier", "compass", "blanket", "cobalt",
)

_PHRASES: tuple[str, ...] = (
    "the quick brown fox", "a cup of warm tea", "good morning to you", "seven small boats",
    "bring the red umbrella", "the library opens at nine", "water the plants today",
    "a quiet evening walk", "three green apples", "the train leaves early", "fresh bread and butter",
    "turn off the lights", "the moon is bright tonight", "pack a warm coat", "our team won the match",
    "read one page each day", "the kettle is boiling", "paint the fence blue",
)

_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are Nova, a concise and accurate assistant.",
    "You are a patient tutor. Show your steps when doing arithmetic.",
    "You are a friendly assistant that answers questions clearly.",
)

_UPPER_SYSTEM = "Always write your entire reply in uppercase letters."


def _arithmetic(rng: random.Random) -> tuple[str, str, int]:
    """Return (question, worked answer, result) for a multi-step arithmetic problem."""
    kind = rng.randrange(5)
    a, b, c, d = (rng.randint(2, 40) for _ in range(4))
    if kind == 0:
        p = b * c
        r = a + p
        expr = f"{a} + {b} * {c}"
        steps = [f"Multiplication comes first: {b} * {c} = {p}.", f"Then add: {a} + {p} = {r}."]
    elif kind == 1:
        s = a + b
        r = s * c
        expr = f"({a} + {b}) * {c}"
        steps = [f"Start inside the parentheses: {a} + {b} = {s}.", f"Then multiply: {s} * {c} = {r}."]
    elif kind == 2:
        p = a * b
        r = p - c
        expr = f"{a} * {b} - {c}"
        steps = [f"Multiplication comes first: {a} * {b} = {p}.", f"Then subtract: {p} - {c} = {r}."]
    elif kind == 3:
        s = a - b
        r = s + c
        expr = f"{a} - {b} + {c}"
        steps = [f"Work from left to right: {a} - {b} = {s}.", f"Then add: {s} + {c} = {r}."]
    else:
        p, q = a * b, c * d
        r = p + q
        expr = f"{a} * {b} + {c} * {d}"
        steps = [f"First product: {a} * {b} = {p}.", f"Second product: {c} * {d} = {q}.", f"Then add: {p} + {q} = {r}."]
    question = rng.choice(("What is {e}?", "Compute {e}.", "Calculate {e} step by step.", "Evaluate {e}."))
    answer = " ".join(steps) + f" The answer is {r}."
    return question.format(e=expr), answer, r


def _phrase(rng: random.Random) -> str:
    return rng.choice(_PHRASES) if rng.random() < 0.6 else " ".join(rng.sample(_WORDS, rng.randint(2, 5)))


def _mixed_case(rng: random.Random, text: str) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in text)


def _case_task(rng: random.Random, upper: bool) -> tuple[str, str]:
    phrase = _phrase(rng)
    if upper:
        prompt = rng.choice(("Convert to uppercase: {p}", "Write this in capital letters: {p}",
                             "Rewrite the following phrase in uppercase: {p}"))
        return prompt.format(p=phrase), phrase.upper()
    source = _mixed_case(rng, phrase)
    prompt = rng.choice(("Convert to lowercase: {p}", "Write this in small letters only: {p}",
                         "Rewrite the following phrase in lowercase: {p}"))
    return prompt.format(p=source), source.lower()


def _reverse_task(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 6))
    prompt = rng.choice(("Reverse the order of these words: {w}", "List these words in reverse order: {w}",
                         "Write this list backwards: {w}"))
    return prompt.format(w=", ".join(words)), ", ".join(reversed(words))


def _fact_task(rng: random.Random, country: str | None = None, field: str | None = None) -> tuple[str, str, str]:
    """Return (question, full answer sentence, short gold value)."""
    country = country or rng.choice(sorted(COUNTRIES))
    field = field or rng.choice(sorted(FACT_FIELDS))
    questions, answer = FACT_FIELDS[field]
    value = COUNTRIES[country][field]
    return rng.choice(questions).format(c=country), answer.format(c=country, v=value), value


def _single_turn(rng: random.Random, family: str) -> tuple[list[Message], str, bool]:
    """Build one user/assistant exchange. Returns (messages, gold, allows_upper_system)."""
    if family == "arithmetic":
        q, a, r = _arithmetic(rng)
        return [_m("user", q), _m("assistant", a)], str(r), False
    if family in ("uppercase", "lowercase"):
        q, a = _case_task(rng, upper=family == "uppercase")
        return [_m("user", q), _m("assistant", a)], a, False
    if family == "reverse":
        q, a = _reverse_task(rng)
        return [_m("user", q), _m("assistant", a)], a, False
    if family == "fact":
        q, a, v = _fact_task(rng)
        return [_m("user", q), _m("assistant", a)], v, True
    raise ValueError(f"unknown task family {family!r}")


def _multi_turn(rng: random.Random, family: str) -> tuple[list[Message], str, bool]:
    """Two exchanges where the second depends on the first."""
    if family == "arithmetic":
        q, a, r = _arithmetic(rng)
        k = rng.randint(2, 9)
        follow = rng.choice(("Now multiply that result by {k}.", "What do you get if you multiply it by {k}?"))
        second = f"{r} * {k} = {r * k}. The answer is {r * k}."
        msgs = [_m("user", q), _m("assistant", a), _m("user", follow.format(k=k)), _m("assistant", second)]
        return msgs, str(r * k), False
    if family == "fact":
        country = rng.choice(sorted(COUNTRIES))
        f1, f2 = rng.sample(sorted(FACT_FIELDS), 2)
        q1, a1, _ = _fact_task(rng, country, f1)
        _, a2, v2 = _fact_task(rng, country, f2)
        follow = {
            "capital": "And what is its capital?",
            "currency": "What currency do they use there?",
            "language": "And which language do people speak there?",
            "river": "What is the longest river there?",
        }[f2]
        return [_m("user", q1), _m("assistant", a1), _m("user", follow), _m("assistant", a2)], v2, True
    if family == "reverse":
        q, upper = _case_task(rng, upper=True)
        words = upper.split(" ")
        gold = " ".join(reversed(words))
        follow = "Now reverse the order of the words in that."
        return [_m("user", q), _m("assistant", upper), _m("user", follow), _m("assistant", gold)], gold, False
    raise ValueError(f"no multi-turn variant for {family!r}")


def _m(role: str, content: str) -> Message:
    return {"role": role, "content": content}


_SINGLE_FAMILIES: tuple[str, ...] = ("arithmetic", "uppercase", "lowercase", "reverse", "fact")
_MULTI_FAMILIES: tuple[str, ...] = ("arithmetic", "fact", "reverse")


def make_demo_conversations(n: int, seed: int) -> list[dict[str, Any]]:
    """Generate ``n`` demo chat records deterministically from ``seed``.

    About a fifth of the records are two-turn conversations and about a third start with a
    system message. A fact question may come with a system message that demands an
    uppercase reply; its assistant turn (and gold answer) are then uppercased.

    Args:
        n: Number of records.
        seed: Seed for the private :class:`random.Random` instance (global state is untouched).

    Returns:
        A list of ``{"messages": [...], "task": str, "answer": str}`` dicts.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for _ in range(n):
        multi = rng.random() < 0.2
        if multi:
            family = rng.choice(_MULTI_FAMILIES)
            messages, gold, upper_ok = _multi_turn(rng, family)
            task = f"multi_turn/{family}"
        else:
            family = rng.choice(_SINGLE_FAMILIES)
            messages, gold, upper_ok = _single_turn(rng, family)
            task = family
        roll = rng.random()
        if upper_ok and roll < 0.12:
            messages = [_m("system", _UPPER_SYSTEM)] + [
                _m(m["role"], m["content"].upper()) if m["role"] == "assistant" else m for m in messages
            ]
            gold = gold.upper()
        elif roll < 0.35:
            messages = [_m("system", rng.choice(_SYSTEM_PROMPTS))] + messages
        records.append({"messages": messages, "task": task, "answer": gold})
    return records


def _corpus_facts(rng: random.Random) -> list[str]:
    paragraphs = []
    for country in sorted(COUNTRIES):
        f = COUNTRIES[country]
        templates = (
            f"{country} is a small country whose capital is {f['capital']}. People there speak {f['language']} "
            f"and pay with {f['currency']}. The longest river in {country} is {f['river']}.",
            f"Travellers to {f['capital']}, the capital of {country}, should carry some of {f['currency']}. "
            f"A few words of {f['language']} are always welcome, and a boat trip along {f['river']} is popular.",
            f"In {country} the main language is {f['language']}. Children learn that {f['river']} is the longest "
            f"river in the land and that the government meets in {f['capital']}.",
        )
        paragraphs.extend(rng.sample(templates, 2))
    return paragraphs


def _corpus_instructions(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        q1, a1 = _case_task(rng, upper=True)
        q2, a2 = _case_task(rng, upper=False)
        q3, a3 = _reverse_task(rng)
        out.append(f"Instruction: {q1}\nResponse: {a1}\n\nInstruction: {q2}\nResponse: {a2}\n\n"
                   f"Instruction: {q3}\nResponse: {a3}")
    return out


def make_corpus_text(seed: int = 0, *, arithmetic: int = 140, instructions: int = 60) -> str:
    """Generated part of the tokenizer corpus: fact paragraphs, worked sums and instructions."""
    rng = random.Random(seed)
    parts: list[str] = _corpus_facts(rng)
    for _ in range(arithmetic):
        q, a, _ = _arithmetic(rng)
        parts.append(f"Question: {q}\nWorked answer: {a}")
    parts.extend(_corpus_instructions(rng, instructions))
    rng.shuffle(parts)
    return "\n\n".join(parts) + "\n"


CORPUS_MARKER = "=== generated section (python -m novalign.data.demo rewrites everything below) ==="


def _regenerate(assets: Path = ASSETS_DIR, log: Callable[[str], None] = print) -> None:
    """Rewrite the bundled jsonl files and the generated section of ``corpus.txt``."""
    assets.mkdir(parents=True, exist_ok=True)
    write_jsonl(assets / "demo_sft.jsonl", make_demo_conversations(1500, seed=0))
    write_jsonl(assets / "demo_sft_eval.jsonl", make_demo_conversations(100, seed=1))
    corpus = assets / "corpus.txt"
    head = corpus.read_text(encoding="utf-8").split(CORPUS_MARKER)[0] if corpus.exists() else ""
    corpus.write_text(head.rstrip("\n") + "\n\n" + CORPUS_MARKER + "\n\n" + make_corpus_text(0), encoding="utf-8")
    log(f"wrote demo_sft.jsonl, demo_sft_eval.jsonl and corpus.txt under {assets}")


if __name__ == "__main__":
    _regenerate()
