"""Rule filters (length, script, format) and language identification, each drop named by its rule.

:func:`filter_reason` is the pure rule check; :func:`script_of` names a letter's script from its Unicode
character name; :func:`detect_language` is langdetect (Shuyo's port of Google's language-detection library)
with a fixed seed, since its sampling is random.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

from novalign.config.pipeline import FilterConfig, LanguageConfig
from novalign.flywheel.step import Outcome, TextStep, drop, keep, register, text_of

__all__ = ["script_of", "script_fractions", "filter_reason", "detect_language", "Filter", "Language"]

# the first word of a letter's Unicode name -> our script name
_SCRIPTS = {"LATIN": "latin", "CJK": "han", "CYRILLIC": "cyrillic", "ARABIC": "arabic", "HANGUL": "hangul",
            "HIRAGANA": "kana", "KATAKANA": "kana", "DEVANAGARI": "devanagari", "GREEK": "greek"}


def script_of(ch: str) -> str:
    """``'latin'``, ``'han'``, ... for a letter (``'other'`` for scripts not listed, or unnamed)."""
    try:
        return _SCRIPTS.get(unicodedata.name(ch).split(" ", 1)[0], "other")
    except ValueError:
        return "other"


def script_fractions(text: str) -> dict[str, float]:
    """Share of the text's letters (Unicode category L*) in each script; ``{}`` if it has no letter."""
    counts = Counter(script_of(ch) for ch in text if unicodedata.category(ch).startswith("L"))
    total = sum(counts.values())
    return {s: n / total for s, n in counts.items()} if total else {}


def filter_reason(text: str, c: FilterConfig) -> str | None:
    """The first rule ``text`` breaks, as the reason it is dropped (``None``: it passes every rule).
    Rules in order: length in characters, length in words, script, JSON format, required / forbidden regex."""
    if c.min_chars is not None and len(text) < c.min_chars:
        return f"shorter than {c.min_chars} chars"
    if c.max_chars is not None and len(text) > c.max_chars:
        return f"longer than {c.max_chars} chars"
    words = len(text.split())
    if c.min_words is not None and words < c.min_words:
        return f"fewer than {c.min_words} words"
    if c.max_words is not None and words > c.max_words:
        return f"more than {c.max_words} words"
    if c.scripts is not None:
        share = sum(script_fractions(text).get(s, 0.0) for s in c.scripts)
        if share < c.min_script_fraction:
            return f"script not {'/'.join(c.scripts)}"
    if c.require_json:
        try:
            json.loads(text)
        except ValueError:
            return "not JSON"
    if c.require_regex is not None and not re.search(c.require_regex, text):
        return "require_regex not matched"
    if c.forbid_regex is not None and re.search(c.forbid_regex, text):
        return "forbid_regex matched"
    return None


@register
class Filter(TextStep):
    type = "filter"
    Config = FilterConfig

    def process_one(self, record: dict) -> Outcome:
        reason = filter_reason(text_of(record[self.config.field]), self.config)
        return keep(record) if reason is None else drop(record, reason)


def detect_language(text: str, seed: int = 0, min_chars: int = 1) -> str:
    """A language code (``'en'``, ``'zh-cn'``, ...) or ``'unknown'`` (too short, or no letters to go on)."""
    from langdetect import DetectorFactory, LangDetectException, detect

    if len(text.strip()) < min_chars:
        return "unknown"
    DetectorFactory.seed = seed
    try:
        return detect(text)
    except LangDetectException:
        return "unknown"


@register
class Language(TextStep):
    type = "language"
    Config = LanguageConfig

    def output_fields(self):
        return [self.config.output_field]

    def process_one(self, record: dict) -> Outcome:
        c = self.config
        lang = detect_language(text_of(record[c.field]), c.seed, c.min_chars)
        if c.keep is not None and lang not in c.keep:
            return drop(record, f"language {lang}", lang=lang)
        return keep(record, **{c.output_field: lang})
