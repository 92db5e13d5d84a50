"""The answer-extraction policies (novalign.eval.answers), each pinned by examples worked out by hand, and the
callers wired to the policy that matches what they did before (the world's numbers must not move)."""

import pytest

from novalign.eval import answers as A


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{1} then \\boxed{\\frac{2}{3}}", "\\frac{2}{3}"),  # the last box; {2}{3} balance inside it
    ("\\fbox{ 7 }", "7"),  # \fbox counts too; the content is stripped
    ("\\boxed{\\{1\\}}", "\\{1\\}"),  # escaped braces are not counted: the box closes at the last }
    ("\\boxed{4} and \\boxed{unclosed", "4"),  # an unclosed last box falls back to the one before
    ("no box 5", None),
])
def test_last_boxed(text, expected):
    assert A.last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("48/2 = 24\n#### 72", "72"),
    ("#### 5\n#### 6.", "6"),  # the last ####, its full stop cleaned off
    ("#### $1,000$", "1,000"),  # $...$ cleaned off
    ("####   \n", None),  # nothing after the marker
    ("24 clips", None),
])
def test_gsm8k(text, expected):
    assert A.gsm8k(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 3. Then the answer is 4. Done", "4"),  # the last statement, up to its full stop
    ("Final answer: $\\frac{1}{2}$. I hope", "\\frac{1}{2}"),  # "answer:" and a $...$ span
    ("the answer is 2.5 apples", "2.5 apples"),  # "2.5" is no sentence end (no space after the dot)
    ("the answer is", None),  # nothing after the marker
    ("no marker 5", None),
])
def test_last_answer_is(text, expected):
    assert A.last_answer_is(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is Monday. The answer is Tuesday.", "Monday"),  # the first, not the last
    ("So the answer is: 7\nmore", "7"),  # an optional colon; the line ends the answer
    ("the answer is.", ""),  # a marker with nothing stated: found, empty (the world then grades "")
    ("Answer: 5", None),  # only "answer is" counts here
])
def test_first_answer_is(text, expected):
    assert A.first_answer_is(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("#### 5 and the answer is 6", "5 and the answer is 6"),  # the first marker of the line takes the rest of it
    ("the answer is 6\n#### 5", "5"),  # the last line with a marker
    ("So the answer is 18 apples.\nThanks", "18 apples."),  # the whole rest of the line, as written
    ("Answer: x", "x"),
    ("the answer is   ", None),  # blank after the marker (this raised IndexError before)
    ("no marker", None),
])
def test_last_marked_line(text, expected):
    assert A.last_marked_line(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3 apples and 4.5 pears", "4.5"),
    ("in total 1,000,000 grains", "1,000,000"),  # thousands separators kept
    ("a ratio of 3 / 4", "3/4"),  # a fraction, spaces removed
    ("down by -.5", "-.5"),
    ("no digits", None),
])
def test_last_number(text, expected):
    assert A.last_number(text) == expected


def test_last_line_and_whole_text():
    assert A.last_line("a\n\nb\n  \n") == "b"
    assert A.last_line("  \n") is None
    assert A.whole_text("  Monday \n") == "Monday"


def test_cascades_try_their_policies_in_order():
    """math: box > #### > answer is > number; free form: box > marked line > last line; world: first answer is >
    the whole reply."""
    assert A.math_answer("\\boxed{5} #### 7") == "5"
    assert A.math_answer("#### 7 and the answer is 8") == "7 and the answer is 8"  # #### beats "answer is"
    assert A.math_answer("The answer is 8. Then 9") == "8"
    assert A.math_answer("we get 3 then 4") == "4"
    assert A.math_answer("no digits") is None
    assert A.free_form_answer("\\boxed{x} answer: y") == "x"
    assert A.free_form_answer("answer: y\nlast") == "y"
    assert A.free_form_answer("we get 3 then Paris\n") == "we get 3 then Paris"  # no number guessed
    assert A.free_form_answer("") is None
    assert A.first_stated_answer("The answer is 7. The answer is 8.") == "7"
    assert A.first_stated_answer(" no marker ") == "no marker"
    with pytest.raises(ValueError, match="at least one policy"):
        A.first_found()


def test_callers_use_the_policy_that_matches_their_old_behaviour():
    """The world checker is first_stated_answer itself; eval/math's extract_answer is math_answer (None for an
    empty or missing reply); the exact-answer reward's final_answer is free_form_answer ("" when it finds none)."""
    from novalign.eval.math import extract_answer
    from novalign.train.rl.rewards import final_answer
    from novalign.world import checkers

    assert checkers.final_answer is A.first_stated_answer
    assert checkers.score("41 + 2 = 43. The answer is 43. The answer is 44.", {"type": "answer", "answer": "43"}) == 1.0
    assert extract_answer(None) is None and extract_answer("x 2, y 3") == "3"
    assert final_answer("\n") == "" and final_answer("the answer is  ") == "the answer is"
