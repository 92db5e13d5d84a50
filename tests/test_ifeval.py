"""IFEval verifiers, strict/loose modes, metrics, readers and the `eval-ifeval` command.

Every one of the 25 instruction types gets at least three hand-written responses that follow it and three
that do not, checked in strict and in loose mode (a strict failure that loose mode rightly rescues is listed
in LOOSE_RESCUED; at least three per type fail both); further loose-mode tests show responses that only the
8 variants rescue.
"""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval import (
    INSTRUCTIONS,
    check_instruction,
    evaluate,
    ifeval_accuracy,
    ifeval_reward,
    loose_variants,
    read_ifeval_inputs,
    read_responses,
)
from novalign.eval.ifeval import count_words, split_sentences
from novalign.eval.ifeval_tokenize import word_tokenize

FRENCH = "Bonjour, je suis très heureux de vous aider aujourd'hui avec votre question sur la cuisine française."
GERMAN = "Ich bin sehr glücklich, Ihnen heute bei Ihrer Frage zur deutschen Küche helfen zu können."
ENGLISH = "I am very happy to help you today with your question about French cooking and its history."

# id -> (kwargs, responses that follow, responses that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "keywords:existence": (
        {"keywords": ["apple", "river"]},
        ["An apple fell into the river.", "RIVER and APPLE", "pineapples by the riverbank"],
        ["An apple fell.", "The river ran.", "Pears and lakes."],
    ),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 2, "relation": "at least"},
        ["cat cat", "The Cat saw another cat.", "cat, cat, cat"],
        ["one cat", "no felines here", "a dog and a c-a-t"],
    ),
    "keywords:forbidden_words": (
        {"forbidden_words": ["bad", "evil"]},
        ["Everything is good.", "Badger is a fine animal.", "Medieval history is long."],
        ["That is bad.", "EVIL plans.", "Good and bad, here."],
    ),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 3, "let_relation": "less than"},
        ["Buzz off.", "No such letter.", "Zoo"],
        ["Zzz", "Pizza puzzle", "zigzag zone"],
    ),
    "language:response_language": (
        {"language": "fr"},
        [FRENCH, "Le chat noir dort sur le canapé rouge pendant toute la journée.", "12345 !!!"],
        [ENGLISH, GERMAN, "El gato negro duerme en el sofá rojo durante todo el día."],
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "less than"},
        ["One sentence.", "Dr. Smith came. He left.", "Is it? Yes"],
        ["Yes. No. Maybe.", "One. Two. Three.", "Go! Now! Please! Thanks."],
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        ["First part.\n***\nSecond part.", "***\nFirst.\n***\nSecond.\n***", "A *** B"],
        ["Only one paragraph.", "A\n***\nB\n***\nC", "A\n***\n\n***\nB", "One *** two *** three *** four"],
    ),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "at least"},
        ["one two three four five", "It's a lovely day, isn't it?", "a b c d e f g"],
        ["one two three four", "Hello!", "state-of-the-art"],
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "summary"},
        ["Intro text.\n\nSummary, short.", "Intro.\n\n\"Summary\" follows here.", "A\n\nsummary, then more"],
        ["Intro.\n\nConclusion first.", "Summary first.\n\nThen intro.", "A\n\nSummary.\n\nC",
         "A\n\nSummary: a colon is kept in the first word, as in IFEval.", "Summary in one line only."],
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        ["Send to [name] at [address].", "[a][b][c]", "Dear [x],\n[y]"],
        ["Send to [name].", "No placeholders.", "(name) {address}"],
    ),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        ["Hello.\n\nP.S. See you.", "Body\np.s. lower case works", "Text.\nP. S. spaced"],
        ["Hello.", "PS no dots", "Hello.\nNote: P dot S."],
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        ["* one\n* two", "- one\n- two", "Intro\n* one\n- two"],
        ["* one", "* one\n* two\n* three", "**bold** line\n**bold** line", "* a\n* b\n* c\n* d\n* e"],
    ),
    "detectable_format:constrained_response": (
        {},
        ["My answer is yes.", "Well. My answer is maybe.", "  My answer is no.  "],
        ["Yes.", "My answer is yes", "my answer is no."],
    ),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        ["*one* and *two*", "**bold** part and *it*", "*a*\n*b*\n*c*"],
        ["*one* only", "** ** and * *", "no highlights"],
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "SECTION", "num_sections": 2},
        ["SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1 a SECTION 2 b SECTION 3 c", "intro SECTION 1 x SECTION 2 y"],
        ["SECTION 1\nonly one", "Section 1 a Section 2 b", "SECTION one SECTION two"],
    ),
    "detectable_format:json_format": (
        {},
        ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "```\n[1, 2, 3]\n```"],
        ["{'a': 1}", 'Here is it: {"a": 1}', '```json\n{"a": 1,}\n```'],
    ),
    "detectable_format:title": (
        {},
        ["<<My Poem>>\nRoses are red.", "Text then <<title>>", "<< spaced >>"],
        ["My Poem", "<<  >>", "<<split\ntitle>>"],
    ),
    "combination:two_responses": (
        {},
        ["First answer.\n******\nSecond answer.", "A ****** B", "******\nA\n******\nB\n******"],
        ["Only one answer.", "Same.\n******\nSame.", "A\n******\n\n******\nB"],
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a poem about cats."},
        ["Write a poem about cats. Cats are soft.", "  write a POEM about cats. Meow.", "Write a poem about cats."],
        ["Here is a poem about cats.", "Cats are soft. Write a poem about cats.", "Write a poem about dogs."],
    ),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        ["Done. Any other questions?", '"Done. any other questions?"', "Any other questions?\n\n"],
        ["Any other questions? Bye.", "Done. Any other questions", "Done."],
    ),
    "startend:quotation": (
        {},
        ['"Hello there."', '  "Multi\nline"  ', '""'],
        ["Hello there.", '"Unclosed', "'single quotes'"],
    ),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        ["This is VERY IMPORTANT.", "NASA and ESA agree.", "DON'T STOP"],
        ["This is VERY important.", "no capitals at all", "Title Case Words Only"],
    ),
    "change_case:english_capital": (
        {},
        ["THIS IS AN ANSWER WRITTEN ENTIRELY IN CAPITAL LETTERS.", "THE WEATHER TODAY IS SUNNY AND WARM, SO WE WILL GO TO THE PARK.",
         "I LOVE THE OCEAN AND THE MOUNTAINS IN SUMMER."],
        ["This is not all capitals.", "BONJOUR, JE SUIS TRÈS HEUREUX DE VOUS AIDER AUJOURD'HUI AVEC LA CUISINE.",
         "12345"],
    ),
    "change_case:english_lowercase": (
        {},
        ["this answer is written entirely in lowercase letters.", "hello world, how are you today?",
         "i love the ocean and the mountains in summer."],
        ["This has a capital.", "bonjour, je suis très heureux de vous aider aujourd'hui avec la cuisine.",
         "ALL CAPS"],
    ),
    "punctuation:no_comma": (
        {},
        ["No commas here.", "Full-width comma，is not ASCII", "Semicolons; fine."],
        ["One, two.", ",", "a,b"],
    ),
}


def test_every_instruction_type_is_covered() -> None:
    assert len(INSTRUCTIONS) == 25
    assert set(CASES) == set(INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_verifier_passes_and_fails_by_hand(instruction_id: str) -> None:
    kwargs, passing, failing = CASES[instruction_id]
    assert len(passing) >= 3 and len(failing) >= 3
    verifier = INSTRUCTIONS[instruction_id]
    for response in passing:
        assert verifier(response, **kwargs), f"should pass: {response!r}"
        assert check_instruction(instruction_id, response, kwargs)
        assert check_instruction(instruction_id, response, kwargs, loose=True)
    loose_failures = 0
    for response in failing:
        assert not verifier(response, **kwargs), f"should fail: {response!r}"
        assert not check_instruction(instruction_id, response, kwargs)
        rescued = (instruction_id, response) in LOOSE_RESCUED
        assert check_instruction(instruction_id, response, kwargs, loose=True) == rescued, f"loose: {response!r}"
        loose_failures += not rescued
    assert loose_failures >= 3


# Strict failures above that loose mode rightly accepts: dropping the first or the last line leaves a
# response that follows the instruction (IFEval's 8 variants).
LOOSE_RESCUED = {
    ("length_constraints:number_paragraphs", "A\n***\nB\n***\nC"),  # without the last line: A *** B
    ("length_constraints:nth_paragraph_first_word", "A\n\nSummary.\n\nC"),  # without the last line
    ("detectable_format:number_bullet_lists", "* one\n* two\n* three"),  # without the first or last line
}


# id, kwargs, response that fails strict but passes loose (which variant rescues it, in the comment)
LOOSE_ONLY = [
    ("startend:quotation", {}, 'Sure, here it is:\n"Hello there."'),  # first line removed
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}\nHope this helps!'),  # both removed
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Done. Is there anything else I can help with?\n(generated by a bot)"),  # last line removed
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**"),  # no *
    ("punctuation:no_comma", {}, "Hi, all\nNo commas below\nreally"),  # first line removed
    ("detectable_format:constrained_response", {}, "My answer is **yes**."),  # asterisks removed
]


@pytest.mark.parametrize("instruction_id, kwargs, response", LOOSE_ONLY)
def test_loose_mode_rescues_what_strict_fails(instruction_id: str, kwargs: dict, response: str) -> None:
    assert not check_instruction(instruction_id, response, kwargs)
    assert check_instruction(instruction_id, response, kwargs, loose=True)


def test_loose_variants_are_ifevals_eight() -> None:
    variants = loose_variants("*head*\nbody *x*\ntail")
    assert variants == [
        "*head*\nbody *x*\ntail",
        "body *x*\ntail",
        "*head*\nbody *x*",
        "body *x*",
        "head\nbody x\ntail",
        "body x\ntail",
        "head\nbody x",
        "body x",
    ]


def test_empty_response_fails_even_permissive_instructions() -> None:
    # forbidden_words is trivially met by "", but IFEval fails every instruction on an empty response.
    assert INSTRUCTIONS["keywords:forbidden_words"]("", forbidden_words=["x"])
    assert not check_instruction("keywords:forbidden_words", "  ", {"forbidden_words": ["x"]})
    assert not check_instruction("keywords:forbidden_words", "  ", {"forbidden_words": ["x"]}, loose=True)


def test_none_kwargs_are_dropped_and_bad_kwargs_raise() -> None:
    hf_style = {"num_words": 2, "relation": "less than", "keywords": None, "language": None}
    assert check_instruction("length_constraints:number_words", "one", hf_style)
    with pytest.raises(ValueError, match="relation"):
        INSTRUCTIONS["length_constraints:number_words"]("one", num_words=2, relation="at most")
    with pytest.raises(TypeError):
        INSTRUCTIONS["punctuation:no_comma"]("x", language="en")


def test_language_detection_is_deterministic() -> None:
    ambiguous = "Die Katze ist schön"
    verdicts = {INSTRUCTIONS["language:response_language"](ambiguous, language="de") for _ in range(20)}
    assert len(verdicts) == 1


def test_text_helpers() -> None:
    assert count_words("It's state-of-the-art, isn't it?") == 9  # \w+ tokens, as IFEval/nltk RegexpTokenizer
    assert split_sentences("Wait... what?! No") == ["Wait...", "what?!", "No"]


@pytest.mark.parametrize(("text", "sentences"), [
    # Punkt's English model knows "jan" and "calif" as abbreviations: no break after them, where the
    # rule-based splitter used before broke ("Jan." | "5 at noon.")
    ("The meeting is on Jan. 5 at noon. Bring snacks.", ["The meeting is on Jan. 5 at noon.", "Bring snacks."]),
    ("He moved to Calif. last year. It was sunny.", ["He moved to Calif. last year.", "It was sunny."]),
    # it does not know "fig" or "approx", and a capitalised word after "Inc." starts a sentence: the old
    # splitter had these the other way round
    ("See Fig. 3 for details. It helps.", ["See Fig.", "3 for details.", "It helps."]),
    ("She works at Acme Inc. Her boss is nice.", ["She works at Acme Inc.", "Her boss is nice."]),
    # an ellipsis before a capitalised word does not end the sentence; numbered items do not either
    ("I paid $3.50 for it... Then I left.", ["I paid $3.50 for it... Then I left."]),
    ("Items: 1. eggs 2. milk. Done.", ["Items: 1. eggs 2. milk.", "Done."]),
])
def test_sentences_are_punkts(text, sentences) -> None:
    """IFEval counts sentences with nltk's Punkt English model; these are cases where Punkt and the
    rule-based splitter novalign used before disagree (each expected split is Punkt's)."""
    assert split_sentences(text) == sentences
    three = INSTRUCTIONS["length_constraints:number_sentences"]
    assert three(text, num_sentences=len(sentences), relation="at least")
    assert not three(text, num_sentences=len(sentences) + 1, relation="at least")


@pytest.mark.parametrize(("text", "tokens", "capitals"), [
    ("DON'T STOP", ["DO", "N'T", "STOP"], 3),  # contractions split (the old \w+('\w+)? rule: 2 words)
    ("I CAN'T AND WON'T", ["I", "CA", "N'T", "AND", "WO", "N'T"], 6),
    ("STATE-OF-THE-ART TOOLS", ["STATE-OF-THE-ART", "TOOLS"], 2),  # hyphenated words stay whole (old: 5)
    ("THE U.S. ARMY", ["THE", "U.S.", "ARMY"], 3),  # the abbreviation is one token (old: U, S: 4)
    ("NASA's ROVER", ["NASA", "'s", "ROVER"], 2),
])
def test_capital_words_are_nltk_word_tokens(text, tokens, capitals) -> None:
    """change_case:capital_word_frequency counts upper-case tokens of nltk.word_tokenize."""
    assert word_tokenize(text) == tokens
    check = INSTRUCTIONS["change_case:capital_word_frequency"]
    assert check(text, capital_frequency=capitals, capital_relation="at least")
    assert check(text, capital_frequency=capitals + 1, capital_relation="less than")
    assert not check(text, capital_frequency=capitals + 1, capital_relation="at least")


def test_letter_frequency_takes_any_character() -> None:
    """The official data asks for "#" and "!" counts (keys 1122, 1129); the file must load and count them.
    "#a #b #c #d" has 4 '#'; case is ignored for letters: "Tt t" has 3 t."""
    check = INSTRUCTIONS["keywords:letter_frequency"]
    assert check("#a #b #c #d", letter="#", let_frequency=4, let_relation="at least")
    assert check("Tt t", letter="t", let_frequency=3, let_relation="at least")
    with pytest.raises(ValueError, match="single character"):
        check("x", letter="ab", let_frequency=1, let_relation="at least")


def test_ifeval_reward_is_fraction_followed() -> None:
    reward = ifeval_reward("hello, world", ["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}])
    assert reward == 0.5


def test_ifeval_accuracy_worked_by_hand() -> None:
    """Three prompts, five instructions:

    ========  ===================================  ===============  ===============
    prompt    instructions                         strict           loose
    ========  ===================================  ===============  ===============
    p1        keywords:existence, punctuation:no_comma   T, T       T, T
    p2        keywords:existence, startend:quotation     T, F       T, T
    p3        startend:quotation                         F          F
    ========  ===================================  ===============  ===============

    strict: prompt-level 1/3 (p1 only); instruction-level 3/5; keywords:existence 2/2 = 1.0,
    punctuation:no_comma 1/1 = 1.0, startend:quotation 0/2 = 0.0; per category keywords 1.0,
    punctuation 1.0, startend 0.0.
    loose: prompt-level 2/3 (p1, p2); instruction-level 4/5; startend:quotation 1/2 = 0.5.
    """
    results = [
        {"instruction_id_list": ["keywords:existence", "punctuation:no_comma"], "strict": [True, True],
         "loose": [True, True]},
        {"instruction_id_list": ["keywords:existence", "startend:quotation"], "strict": [True, False],
         "loose": [True, True]},
        {"instruction_id_list": ["startend:quotation"], "strict": [False], "loose": [False]},
    ]
    acc = ifeval_accuracy(results)
    assert acc["num_prompts"] == 3 and acc["num_instructions"] == 5
    assert acc["strict"]["prompt_level"] == pytest.approx(1 / 3)
    assert acc["strict"]["instruction_level"] == pytest.approx(3 / 5)
    assert acc["strict"]["per_instruction"] == {
        "keywords:existence": 1.0, "punctuation:no_comma": 1.0, "startend:quotation": 0.0
    }
    assert acc["strict"]["per_category"] == {"keywords": 1.0, "punctuation": 1.0, "startend": 0.0}
    assert acc["loose"]["prompt_level"] == pytest.approx(2 / 3)
    assert acc["loose"]["instruction_level"] == pytest.approx(4 / 5)
    assert acc["loose"]["per_instruction"]["startend:quotation"] == 0.5
    with pytest.raises(ValueError):
        ifeval_accuracy([])
    with pytest.raises(ValueError, match="result 0"):
        ifeval_accuracy([{"instruction_id_list": ["a:b"], "strict": [], "loose": [True]}])


# ------------------------------------------------------------------------------------------ files


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


INPUT_ROWS = [
    {"key": 1, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 2, "prompt": "Quote a greeting, at least 3 words.",
     "instruction_id_list": ["startend:quotation", "length_constraints:number_words"],
     # Hugging Face style: every kwarg listed, null where unused
     "kwargs": [{"num_words": None, "relation": None}, {"num_words": 3, "relation": "at least", "keywords": None}]},
]


def test_evaluate_joins_by_prompt(tmp_path) -> None:
    inputs = _write(tmp_path / "input.jsonl", INPUT_ROWS)
    responses = _write(tmp_path / "responses.jsonl", [
        {"prompt": "Quote a greeting, at least 3 words.", "response": 'Here:\n"Hello to you all"'},
        {"prompt": "Say hi without commas.", "response": "Hi there"},
    ])
    results = [r.to_dict() for r in evaluate(inputs, responses)]
    assert [r["key"] for r in results] == [1, 2]
    assert results[0]["strict"] == [True]
    assert results[1]["strict"] == [False, True] and results[1]["loose"] == [True, True]
    assert results[1]["kwargs"] == [{}, {"num_words": 3, "relation": "at least"}]
    acc = ifeval_accuracy(results)
    assert acc["strict"]["prompt_level"] == 0.5 and acc["loose"]["prompt_level"] == 1.0


@pytest.mark.parametrize("row, field, problem", [
    ({"key": 3, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "prompt", "not a string"),
    ({"prompt": "p", "instruction_id_list": ["punctuation:nope"], "kwargs": [{}]}, "instruction_id_list[0]",
     "unknown IFEval instruction"),
    ({"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "kwargs", "one per"),
    ({"prompt": "p", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keyword": ["a"]}]},
     "kwargs[0].keyword", "takes no argument"),
    ({"prompt": "p", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 3}]},
     "kwargs[0]", "needs relation"),
    ({"prompt": "p", "instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": 3, "relation": "more than"}]}, "kwargs[0]", "relation must be"),
])
def test_input_errors_name_file_line_field(tmp_path, row, field, problem) -> None:
    path = _write(tmp_path / "input.jsonl", [INPUT_ROWS[0], row])
    with pytest.raises(DataError, match=problem) as info:
        read_ifeval_inputs(path)
    assert (info.value.path, info.value.line, info.value.field) == (path, 2, field)
    assert f"{path}:2" in str(info.value)


def test_response_errors_name_file_line_field(tmp_path) -> None:
    path = _write(tmp_path / "r.jsonl", [{"prompt": "a", "response": "x"}, "", {"prompt": "b", "response": None}])
    with pytest.raises(DataError) as info:
        read_responses(path)
    assert (info.value.line, info.value.field) == (3, "response")
    path = _write(tmp_path / "r2.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "a", "response": "y"}])
    with pytest.raises(DataError, match="line 1") as info:
        read_responses(path)
    assert info.value.line == 2
    path = _write(tmp_path / "r3.jsonl", ["{not json"])
    with pytest.raises(DataError, match=r"r3.jsonl:1"):
        read_responses(path)


def test_missing_response_names_input_line(tmp_path) -> None:
    inputs = _write(tmp_path / "input.jsonl", INPUT_ROWS)
    responses = _write(tmp_path / "responses.jsonl", [{"prompt": "Say hi without commas.", "response": "Hi"}])
    with pytest.raises(DataError, match="no response") as info:
        evaluate(inputs, responses)
    assert (info.value.path, info.value.line, info.value.field) == (inputs, 2, "prompt")


def test_cli_eval_ifeval(tmp_path) -> None:
    from typer.testing import CliRunner

    from novalign.cli import app

    inputs = _write(tmp_path / "input.jsonl", INPUT_ROWS)
    responses = _write(tmp_path / "responses.jsonl", [
        {"prompt": "Say hi without commas.", "response": "Hi there"},
        {"prompt": "Quote a greeting, at least 3 words.", "response": '"Hello to you all"'},
    ])
    out = tmp_path / "out" / "results.jsonl"
    result = CliRunner().invoke(app, ["eval-ifeval", "--input", inputs, "--responses", responses,
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "prompt-level" in result.output and "startend:quotation" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["follow_all_strict"] for r in rows] == [True, True]

    bad = _write(tmp_path / "bad.jsonl", ["[1, 2]"])
    result = CliRunner().invoke(app, ["eval-ifeval", "--input", bad, "--responses", responses])
    assert result.exit_code == 2
    assert "bad.jsonl:1" in result.output
