"""A pool of labeled prompts with known true labels, to measure labelers, vote aggregation and the prompt
classifier (report section 3.1.1) where no strong LLM and no hub data exist.

Each prompt is composed from independent parts, so no single word gives a dimension away:

* the **task** (ability / attribute): several English and Chinese templates per attribute, each needing a
  topic and, for IF / IP / Code / FC / Role, a context (a passage, code, a tool list, a persona);
* the **domain**: the topic and the passage's facts come from the domain's own vocabulary;
* the **difficulty**: the task's scope -- a plain request (easy), one asking for steps or a comparison
  (intermediate), one asking for proofs, edge cases, trade-offs for experts (difficult), each phrased
  several ways, put before or after the task;
* the **constraints**: 0, 1, or 3-4 requirement clauses (length, format, keywords, tone, ending, audience),
  inline or as a numbered list;
* the **language**: English or Simplified Chinese templates; Traditional Chinese is the Simplified text
  converted with zhconv (MediaWiki's conversion tables); Code prompts are sometimes only code (Python or
  C++: the language is then the programming language).

:func:`generate_pool` is seeded and deterministic; every record is
``{"id", "prompt", "true_labels": {ability, attributes, domain, language, difficulty, constraints}}``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from novalign.world import prompt_texts as T

__all__ = ["generate_pool", "render_prompt", "ATTRIBUTES"]

ATTRIBUTES: dict[str, str] = {attr: ability for ability, attrs in T.ABILITIES.items() for attr in attrs}
LANG_WEIGHTS = {"en": 0.45, "zh-Hans": 0.35, "zh-Hant": 0.20}
CODE_ONLY_SHARE = 0.3  # of Code prompts: written as code alone (language python or cpp)


def _topic(rng: random.Random, domain: str, lang: str) -> str:
    en, zh = rng.choice(T.TOPICS[domain])
    return en if lang == "en" else zh


def _passage(rng: random.Random, domain: str, lang: str) -> str:
    """Three sentences of domain facts: the text an IF / IP task works on."""
    facts = rng.sample(T.FACTS[domain], 3)
    return " ".join(en for en, _ in facts) if lang == "en" else "".join(zh for _, zh in facts)


def _context(rng: random.Random, attribute: str, domain: str, lang: str) -> dict[str, str]:
    k = "en" if lang == "en" else "zh"
    ctx = {"topic": _topic(rng, domain, lang), "topic2": _topic(rng, domain, lang), "text": _passage(rng, domain, lang),
           "n": str(rng.randint(3, 97)), "m": str(rng.randint(2, 19)), "name": rng.choice(T.NAMES[k])}
    if attribute in ("persona_dialogue",):
        ctx["persona"] = rng.choice(T.PERSONAS[domain])[0 if k == "en" else 1]
    if attribute == "tool_call":
        tools = rng.sample(T.TOOLS[domain], 2) + rng.sample(T.TOOLS["generic"], 1)
        rng.shuffle(tools)
        ctx["tools"] = "; ".join(tools)
    if attribute in ("code_writing", "debugging"):
        ctx["code"] = rng.choice(T.BUGGY_CODE).format(fn=rng.choice(T.FUNCTION_NAMES[domain]))
    return ctx


def _constraint_clauses(rng: random.Random, level: str, lang: str) -> str:
    k = "en" if lang == "en" else "zh"
    count = {"unconstrained": 0, "simple": 1, "strong": rng.choice([3, 4])}[level]
    if count == 0:
        return ""
    kinds = rng.sample(list(T.CONSTRAINTS), count)
    clauses = [rng.choice(T.CONSTRAINTS[kind][k]).format(n=rng.choice([50, 80, 100, 150, 200, 300]),
                                                         kw=rng.choice(T.KEYWORDS[k])) for kind in kinds]
    if count == 1:
        return rng.choice(T.ONE_CONSTRAINT[k]).format(c=clauses[0])
    if rng.random() < 0.5:
        items = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(clauses))
        return rng.choice(T.LIST_HEAD[k]) + "\n" + items
    joiner = "; " if k == "en" else "；"
    return rng.choice(T.INLINE_HEAD[k]).format(c=joiner.join(clauses))


def render_prompt(rng: random.Random, attribute: str, domain: str, lang: str, difficulty: str,
                  constraints: str) -> tuple[str, str]:
    """``(prompt text, language label)`` for one combination of labels."""
    code_only = ATTRIBUTES[attribute] == "Code" and rng.random() < CODE_ONLY_SHARE
    ctx = _context(rng, attribute, domain, lang)
    if code_only:
        plang = rng.choice(["python", "cpp"])
        body = rng.choice(T.CODE_ONLY[attribute][plang]).format(
            topic=_topic(rng, domain, "en"), fn=rng.choice(T.FUNCTION_NAMES[domain]),
            hint=rng.choice(T.CODE_DIFFICULTY[difficulty]), cons=rng.choice(T.CODE_CONSTRAINTS[constraints]))
        return body, plang
    k = "en" if lang == "en" else "zh"
    task = rng.choice(T.TASKS[attribute][k]).format(**ctx)
    scope = rng.choice(T.DIFFICULTY[difficulty][k]).format(**ctx) if T.DIFFICULTY[difficulty][k] else ""
    parts = [scope, task] if scope and rng.random() < 0.4 else [task, scope]
    tail = _constraint_clauses(rng, constraints, lang)
    sep = " " if k == "en" else ""
    text = sep.join(p for p in parts if p)
    if tail:
        text += ("\n" if "\n" in tail or rng.random() < 0.5 else sep) + tail
    if lang == "zh-Hant":
        import zhconv

        text = zhconv.convert(text, "zh-tw")
    return text, lang


def generate_pool(n: int, seed: int = 0, *, languages: dict[str, float] | None = None) -> list[dict]:
    """``n`` distinct labeled prompts (labels drawn uniformly per dimension, languages by ``languages``'
    weights); deterministic for a seed."""
    rng = random.Random(seed)
    weights = languages or LANG_WEIGHTS
    langs, lw = list(weights), list(weights.values())
    abilities = list(T.ABILITIES)
    out: list[dict] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20 * n + 100:
            raise RuntimeError(f"generate_pool: only {len(out)} distinct prompts of {n} after {tries} draws")
        ability = rng.choice(abilities)
        attribute = rng.choice(T.ABILITIES[ability])
        domain = rng.choice(list(T.TOPICS))
        lang = rng.choices(langs, lw)[0]
        difficulty = rng.choice(["easy", "intermediate", "difficult"])
        constraints = rng.choice(["unconstrained", "simple", "strong"])
        text, language = render_prompt(rng, attribute, domain, lang, difficulty, constraints)
        if text in seen:
            continue
        seen.add(text)
        out.append({"id": f"pp-{len(out)}", "prompt": text, "true_labels": {
            "ability": ability, "attributes": attribute, "domain": domain, "language": language,
            "difficulty": difficulty, "constraints": constraints}})
    return out


def split(records: Sequence[dict], fractions: Sequence[float], seed: int = 0) -> list[list[dict]]:
    """Disjoint random parts of ``records`` of the given shares (the rest goes to the last part)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    parts, start = [], 0
    for f in fractions[:-1]:
        end = start + round(f * len(records))
        parts.append([records[i] for i in idx[start:end]])
        start = end
    parts.append([records[i] for i in idx[start:]])
    return parts
