"""IFEval-compatible verifiable instructions (Zhou et al. 2023, https://arxiv.org/abs/2311.07911).

Each of IFEval's 25 instruction types is a plain function ``(response, **kwargs) -> bool`` registered in
:data:`INSTRUCTIONS` under its original id (``"keywords:existence"``, ``"detectable_format:json_format"``,
...), taking IFEval's original kwargs names, so a verifier is usable unchanged as an RL reward::

    >>> INSTRUCTIONS["punctuation:no_comma"]("No commas here.")
    True
    >>> INSTRUCTIONS["length_constraints:number_words"]("one two three", num_words=5, relation="less than")
    True

Strict mode checks the response as given; loose mode passes if any of 8 variants passes (the response,
without its first line, without its last line, without both, and each of these with ``*`` removed), as in
IFEval's ``evaluation_lib``. An empty (whitespace-only) response fails every instruction in both modes.

Tokenization is IFEval's: sentences are nltk's Punkt English sentences and capital words are
``nltk.word_tokenize`` tokens, through :mod:`novalign.eval.ifeval_tokenize` (the Punkt model comes from a
PyPI package instead of a run-time download). Word counts are ``\\w+`` tokens, as IFEval's ``count_words``.

Departures from the reference implementation, all deliberate:

- **Keywords are matched literally** (``re.escape``), where IFEval pasted them into a regex; the official
  data has no regex metacharacters in keywords, so scores are unchanged.
- **Language detection** uses ``langdetect`` with a private, fixed-seed detector factory, so a verdict
  does not change between runs (langdetect is random by default). As in IFEval, text langdetect cannot
  classify (no letters) counts as passing the language check.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from novalign.data.io import DataError, iter_records
from novalign.eval.ifeval_tokenize import count_sentences, split_sentences, word_tokenize

__all__ = [
    "INSTRUCTIONS",
    "RELATIONS",
    "IFEvalExample",
    "PromptResult",
    "check_instruction",
    "count_words",
    "evaluate",
    "evaluate_example",
    "ifeval_reward",
    "loose_variants",
    "read_ifeval_inputs",
    "read_responses",
    "split_sentences",
]

RELATIONS = ("less than", "at least")
"""IFEval's comparison relations: ``count < N`` and ``count >= N``."""

# --------------------------------------------------------------------------------------- text helpers

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of ``\\w+`` tokens, exactly IFEval's ``count_words`` (nltk ``RegexpTokenizer(r"\\w+")``)."""
    return len(_WORD.findall(text))


def _count(value: Any, name: str) -> int:
    """A non-negative integer kwarg; integral floats (as some JSON writers emit) are accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _compare(count: int, relation: str, threshold: Any, name: str) -> bool:
    threshold = _count(threshold, name)
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _language_detector_factory():
    """langdetect's profiles in a private factory with a fixed seed: deterministic, no global state changed."""
    try:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    except ImportError as exc:  # pragma: no cover - langdetect is a dependency
        raise ImportError("IFEval's language checks need langdetect: pip install langdetect") from exc
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.seed = 0
    return factory


def _detect_language(text: str) -> str | None:
    """ISO 639-1 code (``"en"``, ``"zh-cn"``...) or ``None`` when langdetect finds no features."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_detector_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


# ------------------------------------------------------------------------------ the 25 instructions


def keywords_existence(response: str, *, keywords: Sequence[str]) -> bool:
    """Every keyword appears (case-insensitive, also inside longer words)."""
    if isinstance(keywords, str):
        raise TypeError(f"keywords must be a list of strings, got {keywords!r}")
    return all(re.search(re.escape(_text(k, "keywords")), response, re.IGNORECASE) for k in keywords)


def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword occurs (case-insensitive substring count) fewer than / at least ``frequency`` times."""
    count = len(re.findall(re.escape(_text(keyword, "keyword")), response, re.IGNORECASE))
    return _compare(count, relation, frequency, "frequency")


def keywords_forbidden_words(response: str, *, forbidden_words: Sequence[str]) -> bool:
    """None of the words occurs as a whole word (case-insensitive)."""
    if isinstance(forbidden_words, str):
        raise TypeError(f"forbidden_words must be a list of strings, got {forbidden_words!r}")
    return not any(
        re.search(r"\b" + re.escape(_text(w, "forbidden_words")) + r"\b", response, re.IGNORECASE)
        for w in forbidden_words
    )


def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The character (case-insensitive) occurs fewer than / at least ``let_frequency`` times. Any single
    character, as IFEval takes it: the official data counts ``#`` and ``!`` too."""
    if not isinstance(letter, str) or len(letter) != 1:
        raise ValueError(f"letter must be a single character, got {letter!r}")
    return _compare(Counter(response.lower())[letter.strip().lower()], let_relation, let_frequency, "let_frequency")


def language_response_language(response: str, *, language: str) -> bool:
    """The whole response is in ``language`` (langdetect code, e.g. ``"en"``, ``"ko"``)."""
    detected = _detect_language(response)
    return detected is None or detected == _text(language, "language")


def length_number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """Fewer than / at least ``num_sentences`` sentences (nltk Punkt English, IFEval's ``count_sentences``)."""
    return _compare(count_sentences(response), relation, num_sentences, "num_sentences")


def length_number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by the markdown divider ``***``.

    An empty paragraph is allowed only before the first or after the last divider.
    """
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == _count(num_paragraphs, "num_paragraphs")


def length_number_words(response: str, *, num_words: int, relation: str) -> bool:
    """Fewer than / at least ``num_words`` words (``\\w+`` tokens)."""
    return _compare(count_words(response), relation, num_words, "num_words")


def length_nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by blank lines (``\\n\\n``), and paragraph
    ``nth_paragraph`` (1-based) starts with ``first_word`` (case-insensitive, punctuation ignored)."""
    expected, nth = _count(num_paragraphs, "num_paragraphs"), _count(nth_paragraph, "nth_paragraph")
    first_word = _text(first_word, "first_word").lower()
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()  # indexed over all pieces, as IFEval does
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for char in word:
        if char in ".,?!'\"":
            break
        found += char.lower()
    return count == expected and found == first_word


def content_number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[address]``."""
    return len(re.findall(r"\[.*?\]", response)) >= _count(num_placeholders, "num_placeholders")


def content_postscript(response: str, *, postscript_marker: str) -> bool:
    """The response contains a postscript starting with ``postscript_marker`` (``"P.S."``, ``"P.P.S"``...)."""
    marker = _text(postscript_marker, "postscript_marker")
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pattern, response.lower(), re.MULTILINE) is not None


def format_number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* item`` or ``- item``)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, re.MULTILINE)
    return len(stars) + len(dashes) == _count(num_bullets, "num_bullets")


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def format_constrained_response(response: str) -> bool:
    """The response contains one of the fixed options ``My answer is yes./no./maybe.``"""
    return any(option in response.strip() for option in _CONSTRAINED_OPTIONS)


def format_number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least ``num_highlights`` non-empty markdown highlights (``*text*`` or ``**text**`` on one line)."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= _count(num_highlights, "num_highlights")


def format_multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` sections, each opened by ``<section_spliter> <number>`` (e.g. ``SECTION 1``);
    the marker is case-sensitive. (``spliter`` is IFEval's spelling.)"""
    pattern = r"\s?" + re.escape(_text(section_spliter, "section_spliter").strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= _count(num_sections, "num_sections")


def format_json_format(response: str) -> bool:
    """The whole response is JSON, optionally fenced in a markdown code block."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def format_title(response: str) -> bool:
    """A non-empty title in double angular brackets, such as ``<<poem of joy>>``."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def combination_two_responses(response: str) -> bool:
    """Exactly two different responses separated by six asterisks ``******``."""
    parts = response.split("******")
    kept = []
    for index, part in enumerate(parts):
        if part.strip():
            kept.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0] != kept[1]


def combination_repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """The response starts by repeating ``prompt_to_repeat`` word for word (case-insensitive)."""
    return response.strip().lower().startswith(_text(prompt_to_repeat, "prompt_to_repeat").strip().lower())


def startend_end_checker(response: str, *, end_phrase: str) -> bool:
    """The response ends with ``end_phrase`` (case-insensitive; surrounding double quotes ignored)."""
    return response.strip().strip('"').lower().endswith(_text(end_phrase, "end_phrase").strip().lower())


def startend_quotation(response: str) -> bool:
    """The whole response is wrapped in double quotation marks."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def change_case_capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """Fewer than / at least ``capital_frequency`` words in ALL CAPITALS, words as ``nltk.word_tokenize`` splits
    them: ``DON'T`` is two (``DO``, ``N'T``), ``STATE-OF-THE-ART`` one, ``U.S.`` one."""
    capitals = sum(1 for word in word_tokenize(response) if word.isupper())
    return _compare(capitals, capital_relation, capital_frequency, "capital_frequency")


def change_case_english_capital(response: str) -> bool:
    """The response is in English and in capital letters only."""
    return response.isupper() and _detect_language(response) in ("en", None)


def change_case_english_lowercase(response: str) -> bool:
    """The response is in English and in lowercase letters only."""
    return response.islower() and _detect_language(response) in ("en", None)


def punctuation_no_comma(response: str) -> bool:
    """No comma at all (ASCII ``,``; IFEval does not count the full-width ``，``)."""
    return "," not in response


INSTRUCTIONS: Mapping[str, Callable[..., bool]] = MappingProxyType({
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": change_case_capital_word_frequency,
    "change_case:english_capital": change_case_english_capital,
    "change_case:english_lowercase": change_case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
})
"""IFEval instruction id -> verifier ``(response, **kwargs) -> bool``."""

# ------------------------------------------------------------------------------ strict and loose checks


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose-mode variants: the response, without its first line, without its last line,
    without both — and each of those four with every ``*`` removed (markdown emphasis)."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def check_instruction(
    instruction_id: str, response: str, kwargs: Mapping[str, Any] | None = None, *, loose: bool = False
) -> bool:
    """Whether ``response`` follows one instruction, in strict or loose mode.

    ``None`` values in ``kwargs`` are dropped (the Hugging Face copy of IFEval lists every kwarg of every
    type, with ``null`` for those that do not apply).

    Raises:
        KeyError: unknown instruction id.
        TypeError / ValueError: missing, unexpected or invalid kwargs.
    """
    verifier = INSTRUCTIONS[instruction_id]
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    candidates = loose_variants(response) if loose else [response]
    return any(c.strip() and verifier(c, **args) for c in candidates)


def ifeval_reward(response: str, instruction_id_list: Sequence[str], kwargs: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of the instructions the response follows in strict mode, in [0, 1]: an RL reward."""
    if not instruction_id_list:
        return 0.0
    hits = [check_instruction(i, response, k) for i, k in zip(instruction_id_list, kwargs, strict=True)]
    return sum(hits) / len(hits)


# ----------------------------------------------------------------------------------- files and joining


@dataclass(frozen=True)
class IFEvalExample:
    """One line of IFEval's input file; ``kwargs[i]`` belongs to ``instruction_id_list[i]``, Nones dropped."""

    key: Any
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    line: int = 0


@dataclass(frozen=True)
class PromptResult:
    """One prompt's verdicts, per instruction, in both modes; :meth:`to_dict` is a results-file line."""

    example: IFEvalExample
    response: str
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        ex = self.example
        return {
            "key": ex.key,
            "prompt": ex.prompt,
            "response": self.response,
            "instruction_id_list": list(ex.instruction_id_list),
            "kwargs": [dict(k) for k in ex.kwargs],
            "strict": list(self.strict),
            "loose": list(self.loose),
            "follow_all_strict": all(self.strict),
            "follow_all_loose": all(self.loose),
        }


def _validate_kwargs(path: os.PathLike[str] | str, line: int, index: int, instruction_id: str, args: dict) -> None:
    """Fail on a kwarg the verifier does not take, lacks, or rejects — at read time, with its location."""
    params = inspect.signature(INSTRUCTIONS[instruction_id]).parameters
    accepted = {name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for name in args:
        if name not in accepted:
            raise DataError(path, line, f"kwargs[{index}].{name}",
                            f"{instruction_id} takes no argument {name!r} (it takes: {sorted(accepted) or 'none'})",
                            reason="unexpected kwarg")
    missing = sorted(accepted - set(args))
    if missing:
        raise DataError(path, line, f"kwargs[{index}]", f"{instruction_id} needs {', '.join(missing)}",
                        reason="missing kwarg")
    try:
        INSTRUCTIONS[instruction_id]("probe", **args)  # the verifiers validate their arguments
    except (TypeError, ValueError) as exc:
        raise DataError(path, line, f"kwargs[{index}]", f"{instruction_id}: {exc}", reason="invalid kwarg") from exc


def _parse_example(path: os.PathLike[str] | str, line: int, record: dict[str, Any]) -> IFEvalExample:
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(path, line, "prompt", "missing or not a string", reason="bad prompt")
    ids = record.get("instruction_id_list")
    if not isinstance(ids, list) or not ids:
        raise DataError(path, line, "instruction_id_list", "missing or not a non-empty list", reason="bad ids")
    kwargs = record.get("kwargs", [{} for _ in ids])
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(path, line, "kwargs", f"must be a list of {len(ids)} objects, one per instruction",
                        reason="bad kwargs")
    cleaned = []
    for index, (instruction_id, args) in enumerate(zip(ids, kwargs)):
        if instruction_id not in INSTRUCTIONS:
            raise DataError(path, line, f"instruction_id_list[{index}]", f"unknown IFEval instruction {instruction_id!r}",
                            reason="unknown instruction")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise DataError(path, line, f"kwargs[{index}]", "must be an object", reason="bad kwargs")
        args = {k: v for k, v in args.items() if v is not None}
        _validate_kwargs(path, line, index, instruction_id, args)
        cleaned.append(args)
    return IFEvalExample(record.get("key", line), prompt, tuple(ids), tuple(cleaned), line)


def read_ifeval_inputs(path: str | os.PathLike[str]) -> list[IFEvalExample]:
    """Read IFEval's input JSONL (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).

    Raises:
        DataError: naming file, line and field, for a malformed line, an unknown instruction id, or kwargs
            that the instruction does not take, lacks or rejects.
    """
    return [_parse_example(path, line, record) for line, record in iter_records(path)]


def read_responses(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``{prompt, response}`` JSONL file into ``prompt -> response``.

    Raises:
        DataError: a line without string ``prompt`` / ``response``, or a prompt given twice with different
            responses (which one to score would be a guess).
    """
    responses: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, record in iter_records(path):
        for name in ("prompt", "response"):
            if not isinstance(record.get(name), str):
                raise DataError(path, line, name, "missing or not a string", reason=f"bad {name}")
        prompt, response = record["prompt"], record["response"]
        if prompt in responses and responses[prompt] != response:
            raise DataError(path, line, "prompt", f"this prompt already has a different response on line "
                            f"{first_line[prompt]}", reason="conflicting responses")
        responses[prompt] = response
        first_line.setdefault(prompt, line)
    return responses


def evaluate_example(example: IFEvalExample, response: str) -> PromptResult:
    """Check every instruction of one prompt in strict and loose mode."""
    pairs = list(zip(example.instruction_id_list, example.kwargs))
    return PromptResult(
        example,
        response,
        strict=tuple(check_instruction(i, response, k) for i, k in pairs),
        loose=tuple(check_instruction(i, response, k, loose=True) for i, k in pairs),
    )


def evaluate(
    inputs_path: str | os.PathLike[str], responses_path: str | os.PathLike[str]
) -> list[PromptResult]:
    """Score a responses file against an IFEval input file (like IFEval's ``evaluation_main``).

    Raises:
        DataError: as the readers do, or for an input prompt that has no response (named by input line).
    """
    examples = read_ifeval_inputs(inputs_path)
    responses = read_responses(responses_path)
    results = []
    for example in examples:
        if example.prompt not in responses:
            raise DataError(inputs_path, example.line, "prompt", f"no response to this prompt in {responses_path}",
                            reason="missing response")
        results.append(evaluate_example(example, responses[example.prompt]))
    return results
