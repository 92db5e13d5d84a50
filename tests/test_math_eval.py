"""Math final answers (novalign.eval.math): extraction, equivalence through math-verify and the pure-Python
fallback, accuracy, and the math_answer_reward RL reward."""

import sys
import threading

import pytest

from novalign.eval import math as nmath
from novalign.eval.math import (
    answers_equivalent,
    extract_answer,
    gold_answer,
    math_accuracy,
)
from novalign.train.rl.rewards import compute_rewards, math_answer_reward

P = [{"role": "user", "content": "q"}]


# ------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("text, expected", [
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("nested: \\boxed{\\frac{\\sqrt{2}}{2}} done", "\\frac{\\sqrt{2}}{2}"),
    ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),  # several boxes -> the last
    ("\\boxed{5} #### 7", "5"),  # a box wins over ####
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234\n", "1,234"),
    ("The answer is 42. Because 6 * 7 = 42 and 1 more", "42"),
    ("Thus the final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("Answer: -7/3", "-7/3"),
    ("we get 3 apples and 4.5 pears", "4.5"),  # the last number
    ("in total 1,000,000 grains", "1,000,000"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", None, "no number here", "\\boxed{unclosed"])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_gold_answer_reduces_solutions_only():
    assert gold_answer("48 / 2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("\\boxed{\\frac12}") == "\\frac12"
    assert gold_answer(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert gold_answer("42") == "42"


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("pred, gold", [
    ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac12"), ("\\dfrac{1}{2}", "0.5"), ("\\tfrac{1}{2}", "1/2"),
    ("3.0", "3"), ("18.00", "18"), ("1,000", "1000"), ("-3", "-3"),
    # percentages (documented choice, math-verify's): 50\% equals both 0.5 and 50
    ("50\\%", "0.5"), ("50%", "50"),
    ("2\\sqrt{3}", "\\sqrt{12}"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("(x+1)^2", "x^2+2x+1"),
    ("(1,2]", "(1, 2]"), ("[0, \\infty)", "[0,\\infty)"),
    ("\\{3, 1, 2\\}", "\\{1,2,3\\}"), ("3, 2, 1", "1, 2, 3"),
    ("x = 5", "5"), ("$\\frac{3}{4}$", "0.75"), ("\\text{(B)}", "B"), ("18 \\text{ dollars}", "18"),
])
def test_equivalent(pred, gold):
    assert answers_equivalent(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("4", "3"), ("0.51", "\\frac12"), ("-3", "3"), ("(1,2)", "[1,2]"), ("\\{1, 2\\}", "\\{1,2,3\\}"),
    ("\\sqrt{3}", "3"), ("x", "y"), ("1000", "100"), ("3.14159", "\\pi"),
    (None, "1"), ("", "1"), ("1", None), ("1", ""),
])
def test_not_equivalent(pred, gold):
    assert not answers_equivalent(pred, gold)


@pytest.mark.parametrize("pred, gold, same", [
    ("0.5", "1/2", True), ("\\frac{1}{2}", ".5", True), ("50%", "0.5", True), ("50\\%", "50", True),
    ("1,000.0", "1000", True), ("3.0", "3", True), ("Paris", " paris. ", True),
    ("0.51", "1/2", False), ("4", "3", False), ("50%", "5", False), ("1,2,3", "123", False),
])
def test_fallback_without_math_verify(monkeypatch, pred, gold, same):
    """With math-verify unavailable, plain numbers are compared exactly and other answers as strings."""
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now raises ImportError
    assert answers_equivalent(pred, gold) is same


def test_fallback_when_math_verify_cannot_parse(monkeypatch):
    monkeypatch.setattr(nmath, "_math_verify_equivalent", lambda pred, gold, timeout: None)
    assert answers_equivalent("\\frac{3}{4}", "0.75")
    assert not answers_equivalent("\\frac{3}{4}", "0.7")


def test_works_off_the_main_thread():
    """math-verify's signal-based timeout only works in the main thread; off it, ours switches it off."""
    results = []
    thread = threading.Thread(target=lambda: results.append(
        (answers_equivalent("\\frac{1}{2}", "0.5"), answers_equivalent("(1,2)", "[1,2]"),
         answers_equivalent("1" * (nmath.MAX_ANSWER_CHARS + 1), "1" * (nmath.MAX_ANSWER_CHARS + 1)))))
    thread.start()
    thread.join(30)
    assert results == [(True, False, True)]


# ------------------------------------------------------------------------------------ accuracy and reward


def test_math_accuracy():
    preds = ["... \\boxed{\\frac{1}{2}}", "so #### 72", "The answer is 7.", "nothing"]
    golds = ["0.5", "Natalia sold 72 clips.\n#### 72", "8", "1"]
    assert math_accuracy(preds, golds) == pytest.approx(2 / 4)
    assert math_accuracy(["0.5", "3"], ["1/2", "3.0"], extract=False) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        math_accuracy(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="at least one"):
        math_accuracy([], [])


def test_math_answer_reward_hand_computed():
    """Rewards by hand: box 1/2 vs 0.5 -> 1; GSM8K 72 vs solution '#### 72' -> 1; 7 vs 8 -> 0;
    no answer -> 0; two boxes, last (\\{2,1\\}) vs {1,2} -> 1."""
    completions = ["Hence \\boxed{\\dfrac{1}{2}}.", "48 + 24 = 72\n#### 72", "The answer is 7.", "I don't know",
                   "\\boxed{3} no wait \\boxed{\\{2, 1\\}}"]
    answers = ["0.5", "48 + 24 = 72\n#### 72", "8", "1", "\\{1,2\\}"]
    reward = math_answer_reward()
    assert reward.__name__ == "math_answer"
    assert compute_rewards(reward, [P] * 5, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0]
