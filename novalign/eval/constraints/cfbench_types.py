"""CFBench-style constraint types that IFEval's 25 lack (CFBench, Zhang et al. 2024, report section 5 / ref [99]:
content, numerical, stylistic, format, linguistic, situation and example constraints), each with a deterministic
validator.

Style and situation constraints (tone, audience) are judged by people in CFBench; here each has a stated,
checkable proxy, so that a validator never guesses:

* tone -- lexicon rules: ``formal``: no contractions, no ``!``, no slang; ``casual``: a contraction or a
  slang word; ``enthusiastic``: a ``!`` and a positive word; ``neutral``: no ``!`` and no emotional word.
* audience -- the LIX readability index (Björnsson 1968: words per sentence + 100 x share of words longer
  than 6 letters): ``children`` LIX < 30, ``general`` LIX < 50, ``expert`` LIX >= 40.
"""

from __future__ import annotations

import json
import re
import unicodedata

from novalign.eval.ifeval import RELATIONS, count_words
from novalign.eval.ifeval_tokenize import split_sentences
from novalign.eval.constraints.base import ConstraintType, Param, register

__all__ = ["lix"]

REL = Param("relation", "choice", RELATIONS)


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# ------------------------------------------------------------------------------------------- style

_CONTRACTION = re.compile(r"\b\w+(n't|'re|'m|'ll|'ve|'d)\b", re.IGNORECASE)
_SLANG = {"gonna", "wanna", "kinda", "yeah", "hey", "cool", "awesome", "lol", "btw", "stuff", "guys", "okay", "ok"}
_POSITIVE = {"great", "amazing", "wonderful", "fantastic", "exciting", "excited", "love", "awesome", "incredible",
             "delighted", "thrilled", "brilliant", "superb", "marvelous"}
_NEGATIVE = {"terrible", "awful", "horrible", "hate", "sad", "angry", "disgusting", "dreadful", "furious"}
TONES = ("formal", "casual", "enthusiastic", "neutral")


def _words_lower(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower().replace("\u2019", "'"))


def tone(response: str, *, tone: str) -> bool:
    """The response keeps the tone's lexicon rules (module docstring)."""
    text = response.replace("\u2019", "'")
    words = set(_words_lower(text))
    contraction, slang = _CONTRACTION.search(text) is not None, bool(words & _SLANG)
    if tone == "formal":
        return not contraction and "!" not in text and not slang
    if tone == "casual":
        return contraction or slang
    if tone == "enthusiastic":
        return "!" in text and bool(words & _POSITIVE)
    return "!" not in text and not words & (_POSITIVE | _NEGATIVE)


def lix(text: str) -> float:
    """LIX = words / sentences + 100 * long words / words (long: more than 6 letters); 0 for no words."""
    words = re.findall(r"[^\W\d_]+", text)
    if not words:
        return 0.0
    sentences = max(1, len(split_sentences(text)))
    return len(words) / sentences + 100 * sum(len(w) > 6 for w in words) / len(words)


AUDIENCES = ("children", "general", "expert")


def audience(response: str, *, audience: str) -> bool:
    """The response's LIX fits the audience (children < 30, general < 50, expert >= 40)."""
    score = lix(response)
    return {"children": score < 30, "general": score < 50, "expert": score >= 40}[audience]


# ------------------------------------------------------------------------------------- content / numeric

_EXAMPLE = re.compile(r"\bfor example\b|\bfor instance\b|\be\.g\.|^\s*example\s*\d*\s*[:.]", re.IGNORECASE | re.MULTILINE)


def example_count(response: str, *, num_examples: int, relation: str) -> bool:
    """Examples are counted by their markers: "for example", "for instance", "e.g." and lines starting
    "Example:" / "Example 2."."""
    return _compare(len(_EXAMPLE.findall(response)), relation, num_examples)


def question_count(response: str, *, num_questions: int, relation: str) -> bool:
    """Question marks (ASCII and full-width) counted."""
    return _compare(response.count("?") + response.count("\uff1f"), relation, num_questions)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")


def number_range(response: str, *, low: float, high: float) -> bool:
    """At least one number, and every number written in digits lies in [low, high]."""
    numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(response)]
    return bool(numbers) and all(low <= n <= high for n in numbers)


def banned_phrases(response: str, *, phrases: list[str]) -> bool:
    """None of the phrases occurs (case-insensitive, whitespace runs equal)."""
    text = " ".join(response.lower().split())
    return not any(" ".join(p.lower().split()) in text for p in phrases)


# ------------------------------------------------------------------------------------- length

def character_count(response: str, *, min_chars: int, max_chars: int) -> bool:
    """Between ``min_chars`` and ``max_chars`` characters, the ends' whitespace not counted."""
    return min_chars <= len(response.strip()) <= max_chars


def sentence_length(response: str, *, max_words: int) -> bool:
    """Every sentence (nltk Punkt) has at most ``max_words`` words."""
    return all(count_words(s) <= max_words for s in split_sentences(response))


# ------------------------------------------------------------------------------------- format / structure

def _table_rows(response: str) -> list[list[str]]:
    rows = []
    for line in response.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|") and len(line) > 1:
            rows.append([c.strip() for c in line[1:-1].split("|")])
    return rows


def table_shape(response: str, *, num_rows: int, num_columns: int) -> bool:
    """One markdown table: a header row, a ``---`` separator row, then exactly ``num_rows`` body rows, every row
    with ``num_columns`` cells."""
    rows = _table_rows(response)
    if len(rows) < 2 or not all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]):
        return False
    return all(len(r) == num_columns for r in rows) and len(rows) - 2 == num_rows


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def heading_count(response: str, *, num_headings: int, relation: str) -> bool:
    """Markdown ATX headings (``#`` .. ``######``) counted."""
    return _compare(len(_HEADING.findall(response)), relation, num_headings)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def section_order(response: str, *, sections: list[str]) -> bool:
    """The markdown headings include every named section, in the given order (compared without case and
    punctuation; other headings may come between)."""
    headings = [_norm(h) for h in _HEADING.findall(response)]
    position = 0
    for name in sections:
        try:
            position = headings.index(_norm(name), position) + 1
        except ValueError:
            return False
    return True


def numbered_list(response: str, *, num_items: int) -> bool:
    """Exactly ``num_items`` numbered lines (``1.`` or ``1)``), numbered 1, 2, ... in order."""
    numbers = [int(m) for m in re.findall(r"^\s*(\d+)[.)]\s+\S", response, re.MULTILINE)]
    return numbers == list(range(1, num_items + 1))


def start_phrase(response: str, *, start_phrase: str) -> bool:
    """The response begins with the phrase (case-insensitive, leading whitespace and quotes ignored)."""
    return response.strip().lstrip('"').lower().startswith(start_phrase.strip().lower())


def code_block(response: str, *, language: str) -> bool:
    """A fenced code block tagged ``language`` (```python ... ```), closed, with something in it."""
    pattern = rf"```{re.escape(language.lower())}[ \t]*\n(.*?)```"
    return any(body.strip() for body in re.findall(pattern, response.lower(), re.DOTALL))


SCRIPTS = {"latin": "LATIN", "han": "CJK", "cyrillic": "CYRILLIC", "arabic": "ARABIC", "greek": "GREEK",
           "hangul": "HANGUL", "devanagari": "DEVANAGARI"}


def script(response: str, *, script: str) -> bool:
    """At least 80 % of the letters are in the named script (Unicode character names)."""
    letters = [c for c in response if c.isalpha()]
    if not letters:
        return False
    tag = SCRIPTS[script]
    return sum(tag in unicodedata.name(c, "") for c in letters) / len(letters) >= 0.8


def json_keys(response: str, *, keys: list[str]) -> bool:
    """The response is one JSON object (optionally fenced) that has every named key at its top level."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", response.strip(), flags=re.IGNORECASE)
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


# ------------------------------------------------------------------------------------- registration

def _type(name, category, descriptions, params, validator, cues, example):
    register(ConstraintType(name, category, tuple(descriptions), tuple(params), validator, tuple(cues), "cfbench",
                            example))


N = r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten)"
_type("style:tone", "style",
      ["Write in a {tone} tone.", "Keep the tone of the answer {tone}.", "Use a {tone} style of writing."],
      [Param("tone", "choice", TONES)], tone,
      [r"\btone\b", r"\b(formal|casual|enthusiastic|neutral)\b.*\b(style|voice|register)\b",
       r"\b(sound|be|stay|keep it) (formal|casual|enthusiastic|neutral)\b"], {"tone": "formal"})
_type("situation:audience", "situation",
      ["Write for an audience of {audience}.", "The reader is {audience}: pitch the text at that level.",
       "Make the answer suitable for {audience} readers."],
      [Param("audience", "choice", AUDIENCES)], audience,
      [r"\baudience\b", r"\b(for|to) (children|kids|experts|specialists|a general)\b", r"\breaders?\b"],
      {"audience": "general"})
_type("content:example_count", "example",
      ["Give {relation} {num_examples} examples, each introduced with \"for example\" or \"Example:\".",
       "Illustrate with {relation} {num_examples} examples (start each with \"For example\")."],
      [Param("num_examples", "int", minimum=0), REL], example_count, [r"\bexamples?\b"],
      {"num_examples": 2, "relation": "at least"})
_type("content:question_count", "content",
      ["Ask the reader {relation} {num_questions} questions.", "Include {relation} {num_questions} questions."],
      [Param("num_questions", "int", minimum=0), REL], question_count, [r"\bquestions?\b"],
      {"num_questions": 1, "relation": "at least"})
_type("numeric:number_range", "numeric",
      ["Every number in the answer must be between {low} and {high}.",
       "Only use numbers from {low} to {high}, and give at least one number."],
      [Param("low", "float"), Param("high", "float")], number_range,
      [r"\bnumbers?\b.*\b(between|from|range)\b", r"\b(between|from)\b.*\b(and|to)\b.*\bnumbers?\b"],
      {"low": 0, "high": 100})
_type("keywords:banned_phrases", "keyword",
      ["Do not use the phrases {phrases}.", "Never write any of these phrases: {phrases}.",
       "Avoid the expressions {phrases}."],
      [Param("phrases", "str_list")], banned_phrases, [r"\b(do not|don't|never|avoid)\b.*\b(phrases?|expressions?)\b"],
      {"phrases": ["in conclusion"]})
_type("length:character_count", "length",
      ["Use between {min_chars} and {max_chars} characters.", "The reply must be {min_chars} to {max_chars} characters long."],
      [Param("min_chars", "int", minimum=0), Param("max_chars", "int", minimum=1)], character_count,
      [r"\bcharacters?\b"], {"min_chars": 10, "max_chars": 500})
_type("length:sentence_length", "length",
      ["No sentence may be longer than {max_words} words.", "Keep every sentence to at most {max_words} words."],
      [Param("max_words", "int", minimum=1)], sentence_length, [r"\bsentences?\b.*\bwords\b|\bwords\b.*\bsentences?\b"],
      {"max_words": 20})
_type("format:table_shape", "format",
      ["Present the answer as a markdown table with {num_columns} columns and {num_rows} rows below the header.",
       "Include one markdown table: {num_rows} data rows, {num_columns} columns."],
      [Param("num_rows", "int", minimum=1), Param("num_columns", "int", minimum=1)], table_shape, [r"\btable\b"],
      {"num_rows": 3, "num_columns": 2})
_type("structure:heading_count", "structure",
      ["Use {relation} {num_headings} markdown headings (lines starting with #).",
       "Organize the answer under {relation} {num_headings} headings."],
      [Param("num_headings", "int", minimum=0), REL], heading_count, [r"\bheadings?\b|\bheaders?\b"],
      {"num_headings": 2, "relation": "at least"})
_type("structure:section_order", "structure",
      ["Use these markdown headings, in this order: {sections}.", "Structure the answer as sections {sections}, in that order."],
      [Param("sections", "str_list")], section_order, [r"\b(sections?|headings?)\b.*\border\b", r"\bin (this|that) order\b"],
      {"sections": ["Introduction", "Summary"]})
_type("format:numbered_list", "format",
      ["Give exactly {num_items} numbered items (1., 2., ...).", "Answer as a numbered list of {num_items} points."],
      [Param("num_items", "int", minimum=1)], numbered_list, [r"\bnumbered\b", r"\bnumber (the|each|your) (steps|items|points)\b"], {"num_items": 3})
_type("startend:start_phrase", "startend",
      ["Begin your response with \"{start_phrase}\".", "Start the answer with the words {start_phrase}"],
      [Param("start_phrase", "str")], start_phrase, [r"\b(begin|start)\w*\b.*\b(with|words?|phrase)\b"],
      {"start_phrase": "Dear reader"})
_type("format:code_block", "format",
      ["Put the code in a fenced {language} code block.", "Include a ```{language} code block."],
      [Param("language", "str")], code_block, [r"\bcode\b", r"```"], {"language": "python"})
_type("language:script", "language",
      ["Write in the {script} script.", "At least 80% of the letters must be {script} characters."],
      [Param("script", "choice", tuple(SCRIPTS))], script, [r"\bscript\b", r"\b(chinese|cyrillic|latin) (characters|letters)\b"],
      {"script": "latin"})
_type("format:json_keys", "format",
      ["Answer with one JSON object that has the keys {keys}.", "Return JSON with the top-level fields {keys}."],
      [Param("keys", "str_list")], json_keys, [r"\bjson\b.*\b(keys?|fields?)\b"], {"keys": ["answer"]})
