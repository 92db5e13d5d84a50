"""One task maker per capability of the demo world: ``make(rng, ...) -> Task`` with a gold response and a
check spec (:mod:`novalign.world.checkers`). Difficulty is mixed within each capability on purpose, so a
small model solves some tasks of every kind and RL finds groups with both right and wrong samples.
"""

from __future__ import annotations

import json
import random
from typing import Any

from novalign.world.kb import QUESTIONS, Country

__all__ = ["CAPABILITIES", "Task", "make_math", "make_reason", "make_if", "make_role", "make_kqa", "make_code",
           "TOPICS", "CODE_FUNCTIONS", "PERSONAS"]

CAPABILITIES = ("math", "reason", "if", "role", "kqa", "code")
Task = dict[str, Any]  # {"capability", "messages" (ends with a user turn), "response" (gold), "check"}

NAMES = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ITEMS = ["apples", "books", "coins", "cups", "pens", "stones"]


def _task(capability: str, messages: list[dict], response: str, check: dict) -> Task:
    return {"capability": capability, "messages": messages, "response": response, "check": check}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _answer(capability: str, prompt: str, work: str, answer: Any) -> Task:
    response = f"{work} The answer is {answer}." if work else f"The answer is {answer}."
    return _task(capability, _user(prompt), response, {"type": "answer", "answer": str(answer)})


# --------------------------------------------------------------------------------------------- Math


def make_math(rng: random.Random) -> Task:
    """Sums of small numbers (easy), two-step sums and differences, products, and word problems."""
    kind = rng.choice(["add", "add", "add2", "chain", "mul", "word"])
    if kind == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return _answer("math", f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b)
    if kind == "add2":
        a, b = rng.randint(10, 49), rng.randint(1, 9)
        return _answer("math", f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b)
    if kind == "chain":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, a + b)
        return _answer("math", f"What is {a} + {b} - {c}?", f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.", a + b - c)
    if kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        return _answer("math", f"What is {a} times {b}?", f"{a} x {b} = {a * b}.", a * b)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    prompt = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    return _answer("math", prompt, f"{a} + {b} = {a + b}.", a + b)


# ------------------------------------------------------------------------------------------- Reason


def make_reason(rng: random.Random) -> Task:
    """The next day, a day n days later, the larger of two numbers, the tallest of three people."""
    kind = rng.choice(["next_day", "days_after", "larger", "tallest"])
    if kind == "next_day":
        i = rng.randrange(7)
        return _answer("reason", f"What day comes after {DAYS[i]}?", f"After {DAYS[i]} comes {DAYS[(i + 1) % 7]}.",
                       DAYS[(i + 1) % 7])
    if kind == "days_after":
        i, n = rng.randrange(7), rng.randint(2, 3)
        path = ", ".join(DAYS[(i + k) % 7] for k in range(n + 1))
        return _answer("reason", f"What day is {n} days after {DAYS[i]}?", f"{path}.", DAYS[(i + n) % 7])
    if kind == "larger":
        a, b = rng.sample(range(10, 100), 2)
        return _answer("reason", f"Which number is larger, {a} or {b}?", f"{max(a, b)} > {min(a, b)}.", max(a, b))
    tall, mid, short = rng.sample(NAMES, 3)
    facts = [f"{tall} is taller than {mid}.", f"{mid} is taller than {short}."]
    rng.shuffle(facts)
    return _answer("reason", f"{' '.join(facts)} Who is the tallest?", f"{tall} > {mid} > {short}.", tall)


# ----------------------------------------------------------------------------------------------- IF

TOPICS = {
    "cats": ["Cats are small animals.", "They sleep a lot and like warm places.", "A cat can see well at night."],
    "dogs": ["Dogs are loyal friends.", "They like to run and play.", "A dog can learn many tricks."],
    "rain": ["Rain falls from clouds.", "It helps plants grow.", "After the rain the air smells fresh."],
    "the sea": ["The sea is large and deep.", "Many fish live in it.", "Its water tastes of salt."],
    "bread": ["Bread is made from flour and water.", "It is baked in an oven.", "Fresh bread smells good."],
    "trees": ["Trees are tall plants.", "They give us shade and wood.", "Birds build nests in trees."],
    "the moon": ["The moon moves around the earth.", "It shines at night.", "Its shape seems to change each week."],
    "winter": ["Winter is the cold season.", "Snow may fall in winter.", "People wear warm coats."],
}
SEEDS = ["Tell me about {t}.", "Write a short note about {t}.", "Describe {t}.", "What do you know about {t}?"]
KEYWORDS = ["happy", "blue", "river", "music", "garden", "light"]
END_PHRASE = "Is there anything else I can help with?"
# constraint name -> (instruction text, IFEval id, kwargs); kwargs with {placeholders} are filled in make_if
CONSTRAINTS = {
    "capital": ("Your entire reply must be in capital letters.", "change_case:english_capital", {}),
    "lower": ("Use only lowercase letters in your reply.", "change_case:english_lowercase", {}),
    "json": ("Wrap your whole reply in JSON.", "detectable_format:json_format", {}),
    "words": ("Answer in fewer than {n} words.", "length_constraints:number_words", {"relation": "less than"}),
    "keyword": ("Include the word {w} in your reply.", "keywords:existence", {}),
    "end": (f"End your reply with the phrase '{END_PHRASE}'", "startend:end_checker", {"end_phrase": END_PHRASE}),
    "quote": ("Wrap your entire reply in double quotation marks.", "startend:quotation", {}),
    "title": ("Give your reply a title in double angular brackets, like <<title>>.", "detectable_format:title", {}),
}
# which second constraint may join a first one without contradicting it
_COMPATIBLE = {
    "capital": ["words", "keyword", "end", "quote", "title", "json"], "lower": ["words", "keyword", "end", "quote", "title", "json"],
    "json": ["capital", "lower", "keyword"], "words": ["capital", "lower", "quote", "title"],
    "keyword": ["capital", "lower", "end", "quote", "title", "json"], "end": ["capital", "lower", "keyword", "title"],
    "quote": ["capital", "lower", "keyword", "words"], "title": ["capital", "lower", "keyword", "end", "words"],
}


def _if_response(topic: str, chosen: list[str], n: int, word: str) -> str:
    """The gold reply: the topic's sentences, transformed by each chosen constraint in a fixed order."""
    body = " ".join(TOPICS[topic])
    if "words" in chosen:  # fewer than n words in all, the title's words included
        budget = n - 1 - (len(topic.split()) if "title" in chosen else 0)
        body = " ".join(TOPICS[topic][0].split()[:budget]).rstrip(".") + "."
    if "keyword" in chosen:
        body += f" {word.capitalize()} is my word of the day."
    if "end" in chosen:
        body += f" {END_PHRASE}"
    if "json" in chosen:
        body = json.dumps({"topic": topic, "text": body})
    if "title" in chosen:
        body = f"<<{topic.title()}>>\n{body}"
    if "quote" in chosen:
        body = f'"{body}"'
    if "capital" in chosen:
        body = body.upper()
    if "lower" in chosen:
        body = body.lower()
    return body


def make_if(rng: random.Random) -> Task:
    """A seed prompt expanded with one or two verifiable constraints (report section 3.1, constraint
    expansion), checked by IFEval's verifiers.

    IFEval's case checks also ask langdetect whether the text is English, and it misjudges a few short
    all-capital or lowercase replies; such a draw is replaced by a fresh one, so every gold reply passes.
    """
    from novalign.world.checkers import passes

    for _ in range(50):
        task = _draw_if(rng)
        if passes(task["response"], task["check"]):
            return task
    raise RuntimeError("could not draw an IF task whose gold reply passes its own check")


def _draw_if(rng: random.Random) -> Task:
    topic = rng.choice(sorted(TOPICS))
    first = rng.choice(sorted(CONSTRAINTS))
    chosen = [first] + ([rng.choice(_COMPATIBLE[first])] if rng.random() < 0.5 else [])
    n, word = rng.randint(5, 7), rng.choice(KEYWORDS)
    texts, ids, kwargs = [], [], []
    for name in chosen:
        text, iid, kw = CONSTRAINTS[name]
        texts.append(text.format(n=n, w=word))
        ids.append(iid)
        kw = dict(kw)
        if name == "words":
            kw["num_words"] = n
        if name == "keyword":
            kw["keywords"] = [word]
        kwargs.append(kw)
    prompt = rng.choice(SEEDS).format(t=topic) + " " + " ".join(texts)
    check = {"type": "ifeval", "instruction_id_list": ids, "kwargs": kwargs}
    return _task("if", _user(prompt), _if_response(topic, chosen, n, word), check)


# ------------------------------------------------------------------------------ Role / system message

# (system prompt, rules, how a plain reply is changed to follow them)
PERSONAS = [
    ("You are Captain Rook, a pirate. Begin every reply with 'Arr!'", [{"kind": "starts_with", "text": "Arr!"}], "arr"),
    ("You are a quiet librarian. Reply only in lowercase letters.", [{"kind": "lowercase"}], "lower"),
    ("You are a robot. End every reply with 'Beep boop.'", [{"kind": "ends_with", "text": "Beep boop."}], "beep"),
    ("You are a town crier. Reply only in capital letters.", [{"kind": "uppercase"}], "upper"),
    ("You are a poet. Wrap every reply in double quotation marks.", [{"kind": "ifeval", "id": "startend:quotation"}], "quote"),
    ("You are Chef Remy. Begin every reply with 'Chef says:' and use only lowercase letters after it.",
     [{"kind": "starts_with", "text": "Chef says:"}, {"kind": "lowercase", "after": "Chef says:"}], "chef"),
]


def _styled(style: str, text: str) -> str:
    return {"arr": lambda t: f"Arr! {t}", "lower": str.lower, "beep": lambda t: f"{t} Beep boop.",
            "upper": str.upper, "quote": lambda t: f'"{t}"', "chef": lambda t: f"Chef says: {t.lower()}"}[style](text)


def _chat_turn(rng: random.Random, kb: list[Country]) -> tuple[str, str]:
    """A plain question and its plain answer, for the turns of a role conversation."""
    if rng.random() < 0.5:
        topic = rng.choice(sorted(TOPICS))
        return rng.choice(SEEDS).format(t=topic), TOPICS[topic][0]
    c = rng.choice(kb)
    question, attr = QUESTIONS[0]
    return question.format(name=c.name), f"The capital of {c.name} is {c.capital}."


def make_role(rng: random.Random, kb: list[Country]) -> Task:
    """A system prompt whose rule must hold on the last of one to three turns (earlier turns obey it too)."""
    system, rules, style = rng.choice(PERSONAS)
    messages = [{"role": "system", "content": system}]
    for _ in range(rng.randint(0, 2)):
        question, answer = _chat_turn(rng, kb)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": _styled(style, answer)}]
    question, answer = _chat_turn(rng, kb)
    messages.append({"role": "user", "content": question})
    return _task("role", messages, _styled(style, answer), {"type": "role", "rules": rules})


# ---------------------------------------------------------------------------------------------- KQA


def make_kqa(rng: random.Random, countries: list[Country]) -> Task:
    """A question about one fact of one of ``countries`` (the caller picks which countries a split asks about)."""
    c = rng.choice(countries)
    question, attr = rng.choice(QUESTIONS)
    return _answer("kqa", question.format(name=c.name), "", getattr(c, attr))


# --------------------------------------------------------------------------------------------- Code

# name, kind of arguments, description ({k}: a constant; {0}, {1}: argument names), body, tests (with {k})
CODE_FUNCTIONS = [
    ("add", "pair", "returns the sum of {0} and {1}", "{0} + {1}", "assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
    ("subtract", "pair", "returns {0} minus {1}", "{0} - {1}", "assert subtract(5, 3) == 2\nassert subtract(1, 4) == -3"),
    ("multiply", "pair", "returns the product of {0} and {1}", "{0} * {1}", "assert multiply(3, 4) == 12"),
    ("maximum", "pair", "returns the larger of {0} and {1}", "max({0}, {1})", "assert maximum(3, 9) == 9\nassert maximum(7, 2) == 7"),
    ("minimum", "pair", "returns the smaller of {0} and {1}", "min({0}, {1})", "assert minimum(3, 9) == 3\nassert minimum(7, 2) == 2"),
    ("square", "num", "returns {0} times {0}", "{0} * {0}", "assert square(3) == 9\nassert square(-2) == 4"),
    ("is_even", "num", "returns True when {0} is even", "{0} % 2 == 0", "assert is_even(4) is True\nassert is_even(7) is False"),
    ("first", "list", "returns the first item of the list {0}", "{0}[0]", "assert first([4, 5, 6]) == 4"),
    ("last", "list", "returns the last item of the list {0}", "{0}[-1]", "assert last([4, 5, 6]) == 6"),
    ("total", "list", "returns the sum of the list {0}", "sum({0})", "assert total([1, 2, 3]) == 6\nassert total([]) == 0"),
    ("reverse", "text", "returns the string {0} reversed", "{0}[::-1]", "assert reverse('abc') == 'cba'"),
    ("plus_k", "num", "returns {0} plus {k}", "{0} + {k}", "assert plus_k(1) == 1 + {k}\nassert plus_k(10) == 10 + {k}"),
    ("times_k", "num", "returns {0} times {k}", "{0} * {k}", "assert times_k(2) == 2 * {k}\nassert times_k(5) == 5 * {k}"),
]
ARG_NAMES = {"pair": [("a", "b"), ("x", "y"), ("m", "n")], "num": [("x",), ("n",), ("v",)],
             "list": [("xs",), ("items",), ("values",)], "text": [("s",), ("text",), ("word",)]}
CODE_PHRASES = ["Write a Python function {sig} that {desc}.", "Define a function {sig} in Python that {desc}.",
                "Implement {sig}: it {desc}."]


def code_example(name: str, args: tuple[str, ...], desc: str, body: str, k: int) -> tuple[str, str]:
    """(signature with description filled in, function source) of one code task."""
    return desc.format(*args, k=k), f"def {name}({', '.join(args)}):\n    return {body.format(*args, k=k)}"


def make_code(rng: random.Random) -> Task:
    """Write a tiny Python function; the check runs its tests in the sandbox."""
    name, kind, desc, body, tests = rng.choice(CODE_FUNCTIONS)
    args, k = rng.choice(ARG_NAMES[kind]), rng.randint(2, 20)
    text, source = code_example(name, args, desc, body, k)
    prompt = rng.choice(CODE_PHRASES).format(sig=f"{name}({', '.join(args)})", desc=text)
    return _task("code", _user(prompt), source, {"type": "code", "tests": tests.format(k=k)})
