"""FollowBench's rule-checked samples (Jiang et al. 2024, arXiv:2310.20410), as ``code/rule_based_evaluation.py``.

FollowBench checks some samples by rule instead of by the judge: those whose ``source`` is one of
:data:`RULE_SOURCES` (exact answers: E2E, text editing, CoNLL-2003; summaries whose constraints are counted:
sentences, words, required / banned words; BBH and GSM8K answers), the two format samples with ``example_id``
22 and 30, and every sample of the ``example`` category (the reply must fill the target's template). Each
rule here is the official one for that source and level; the sources' own constraints (``Potter``,
``Newton Stewart``...) are the words the FollowBench data asks for.

Sentences are what ``re.split(r"[.!?]")`` leaves non-empty; words are whitespace-separated (``split()``) or,
where the official check splits on a single space, ``split(" ")``.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Callable

__all__ = ["RULE_FORMAT_IDS", "RULE_SOURCES", "check_example_template", "is_rule_checked", "rule_satisfied"]

RULE_SOURCES = ("E2E", "WIKIEVENTS", "CONLL2003", "text_editing", "cnn_dailymail", "xsum", "samsum", "gigaword",
                "arxiv", "BBH_logical", "BBH_time", "self_made_space", "gsm_8k")
RULE_FORMAT_IDS = (22, 30)  # the format samples checked by rule (example_id)


def is_rule_checked(sample: dict) -> bool:
    """Whether FollowBench checks ``sample`` by rule (the rest of levels 1-5 go to the judge). ``type`` is the
    data file's constraint type; ``category`` the row's own field (in the mixed file, e.g. ``"format, content"``),
    which the official format-sample test reads."""
    return (sample["type"] == "example" or sample["source"] in RULE_SOURCES
            or (sample["category"] == "format" and sample["example_id"] in RULE_FORMAT_IDS))


def rule_satisfied(sample: dict, generation: str) -> bool:
    """The official rule's verdict for one reply at the sample's level."""
    level = int(sample["level"])
    if sample["type"] == "example":
        return check_example_template(sample["target"].replace("{instruction}\n", ""), generation)
    if sample["source"] in RULE_SOURCES:
        return bool(_BY_SOURCE[sample["source"]](generation, sample.get("target", ""), level))
    return _format_rule(generation, sample["example_id"], level)


# ------------------------------------------------------------------------------------------ text helpers


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"[.!?]", text) if s]


def _has_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text) is not None


def _nth_sentence(text: str, n: int, test: Callable[[str], bool]) -> bool:
    sentences = _sentences(text)
    return len(sentences) >= n and test(sentences[n - 1])


def _space_words(text: str) -> int:
    return len(text.split(" "))


def _present_continuous(text: str) -> bool:
    return re.search(r"\b(am|is|are)\s+\w+ing\b", text) is not None


def _present_perfect(text: str) -> bool:
    return re.search(r"\b(has|have)\s+\w+", text) is not None


def _cumulative(checks: list[Callable[[str], bool]]) -> Callable[[str, str, int], bool]:
    """Level k must pass the first k checks: FollowBench adds one constraint per level."""
    return lambda g, target, level: all(check(g) for check in checks[:level])


# ------------------------------------------------------------------------------------- rules by source


def _last(pattern: str) -> Callable[[str, str, int], bool]:
    """The last match of ``pattern`` in the reply equals the target (BBH / GSM8K answers)."""
    def check(g: str, target: str, level: int) -> bool:
        found = re.findall(pattern, g)
        return bool(found) and found[-1] == target
    return check


def _summary(sentences: int, max_words: int, strict: bool, extra: list[Callable[[str], bool]]):
    """xsum / samsum / arxiv: one sentence, fewer than (or at most) ``max_words`` space-split words, then more."""
    words = (lambda g: _space_words(g) < max_words) if strict else (lambda g: _space_words(g) <= max_words)
    return _cumulative([lambda g: len(_sentences(g)) == sentences, words, *extra])


_BY_SOURCE: dict[str, Callable[[str, str, int], bool]] = {
    "E2E": lambda g, t, level: g == t,
    "text_editing": lambda g, t, level: g == t,
    "WIKIEVENTS": lambda g, t, level: all(line in t.split("\n") for line in g.split("\n")),
    "CONLL2003": lambda g, t, level: g in ast.literal_eval(t),
    "self_made_space": lambda g, t, level: t in g,
    "BBH_logical": _last(r"\([A-Z]\)"),
    "BBH_time": _last(r"\d{2}/\d{2}/\d{4}"),
    "gsm_8k": _last(r"\$\d+"),
    "cnn_dailymail": _cumulative([
        lambda g: len(_sentences(g)) == 3,
        lambda g: all(len(s.split()) < 15 for s in _sentences(g)),
        lambda g: (_nth_sentence(g, 1, lambda s: _has_word(s, "Potter")) and _nth_sentence(g, 2, lambda s: _has_word(s, "actor"))
                   and _nth_sentence(g, 3, lambda s: _has_word(s, "films"))),
        lambda g: not _nth_sentence(g, 2, lambda s: _has_word(s, "lavish")),
        lambda g: _nth_sentence(g, 3, _present_perfect)]),
    "xsum": _summary(1, 20, True, [lambda g: not _has_word(g, "Newton Stewart"), _present_continuous,
                                   lambda g: _has_word(g, "operation")]),
    "samsum": _summary(1, 15, True, [lambda g: _has_word(g, "stuff"),
                                     lambda g: re.search("procrast", g, re.IGNORECASE) is None,
                                     lambda g: sum(ch in string.punctuation for ch in g) == 1]),
    "arxiv": _summary(1, 20, False, [lambda g: g[:2] == "We", lambda g: _has_word(g, "activations"),
                                     lambda g: not _has_word(g, "transformer")]),
    "gigaword": _cumulative([lambda g: _space_words(g) == 8, lambda g: not any(ch in string.punctuation for ch in g),
                             str.islower, lambda g: not _has_word(g, "bus"), lambda g: _has_word(g, "in")]),
}


# ------------------------------------------------------------------------------------- the format rules


def _numbered_paragraphs(text: str) -> bool:
    return all(re.match(r"\d+\.", p.lstrip()) for p in text.split("\n\n") if p.lstrip())


def _format_22(g: str, level: int) -> bool:
    """Three paragraphs (four at level 5, the closing line), each under three sentences; then every sentence
    over 20 words; then numbered paragraphs; level 5 ends with "Those are suggestions"."""
    parts = g.split("\n\n")
    if len(parts) != (4 if level == 5 else 3):
        return False
    checks = [lambda: True, lambda: all(len(_sentences(p)) < 3 for p in parts[:3]),
              lambda: all(len(s.split()) > 20 for s in _sentences(g)), lambda: _numbered_paragraphs(g),
              lambda: g.endswith("Those are suggestions")]
    return all(check() for check in checks[:level])


def _format_30(g: str, level: int) -> bool:
    """``**`` markers; five ``**<digit>...:`` keywords; points under two sentences; sentences of 10-15 words;
    no word ending in ``-ly`` -- the first ``level`` of them (sentences split as the official regex)."""
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s", g)
    points = [s for s in sentences if any(f"{n}." in s for n in range(1, 6))]
    checks = [lambda: "**" in g, lambda: len(re.findall(r"\*\*[\d].+?:", g)) == 5,
              lambda: all(len(s.split(".")) < 3 for s in points),
              lambda: all(10 <= len(s.split()) <= 15 for s in sentences),
              lambda: all(not w.endswith("-ly") for s in sentences for w in s.split())]
    return all(check() for check in checks[:level])


def _format_rule(g: str, example_id: int, level: int) -> bool:
    return _format_22(g, level) if example_id == 22 else _format_30(g, level)


def check_example_template(template: str, generation: str) -> bool:
    """``check_match``: the reply must be the template with ``{answer}`` filled by anything (``{{`` / ``}}`` are
    the template's literal braces). ``"{{'AI assistant': '{answer}'}}"`` accepts ``{'AI assistant': 'x'}``."""
    pattern = template.replace("{{", "{").replace("}}", "}").replace("{answer}", ".*")
    return re.fullmatch(re.escape(pattern).replace("\\.\\*", ".*"), generation) is not None
