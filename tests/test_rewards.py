"""Reward functions (novalign.train.rl.rewards): adapters, weighted mixes, judges and failure policies."""

import logging
import math

import pytest

from novalign.eval.ifeval import INSTRUCTIONS, ifeval_reward
from novalign.llm.client import LLMClient
from novalign.llm.limits import RetryPolicy
from novalign.llm.types import BackendError, BackendResponse
from novalign.train.rl.rewards import (
    RewardError,
    compute_rewards,
    exact_answer_reward,
    final_answer,
    llm_judge_reward,
    normalize_answer,
    reward_model_reward,
    verifier_reward,
    weighted_mix,
)

P = [{"role": "user", "content": "q"}]


def test_ifeval_verifier_plugs_in_unchanged():
    """no_comma + keyword "hello": "hello world" passes both (1.0); "hello, world" only the keyword (1/2)."""
    reward = verifier_reward(ifeval_reward)
    ids = [["punctuation:no_comma", "keywords:existence"]] * 2
    kwargs = [[{}, {"keywords": ["hello"]}]] * 2
    values = compute_rewards(reward, [P, P], ["hello world", "hello, world"], instruction_id_list=ids, kwargs=kwargs)
    assert values == [1.0, 0.5]
    # a single instruction checker (bool, keyword-only kwargs) too; unrelated fields are ignored
    no_comma = verifier_reward(INSTRUCTIONS["punctuation:no_comma"])
    assert no_comma([P, P], ["a b", "a, b"], answer=["x", "y"]) == [1.0, 0.0]
    words = verifier_reward(INSTRUCTIONS["length_constraints:number_words"])
    assert words([P, P], ["one two", "one two three"], num_words=[3, 3], relation=["less than"] * 2) == [1.0, 0.0]


def test_verifier_fields_prompt_and_missing_field():
    def mentions_topic(response, prompt, topic, bonus=0.0):
        return (topic in response) + bonus + (prompt[0]["content"] == "q")

    reward = verifier_reward(mentions_topic)
    assert reward([P, P], ["cats", "dogs"], topic=["cat", "cat"]) == [2.0, 1.0]
    assert reward([P], ["cats"], topic=["cat"], bonus=[0.5]) == [2.5]
    renamed = verifier_reward(mentions_topic, fields={"topic": "subject"}, name="topic_check")
    assert renamed([P], ["dogs"], subject=["dog"]) == [2.0]
    with pytest.raises(RewardError, match="'mentions_topic' needs the per-sample field 'topic'"):
        reward([P], ["cats"])
    with pytest.raises(RewardError, match="non-number for sample 0"):
        verifier_reward(lambda response: "yes")([P], ["x"])


def test_answer_normalization_and_extraction():
    assert normalize_answer(" $1,000.50. ") == "1000.5"
    assert normalize_answer("3.0") == "3"
    assert normalize_answer("  The  Cat! ") == "the cat"
    assert final_answer("work... \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert final_answer("steps\n#### 72\n") == "72"
    assert final_answer("So the answer is 18 apples.\nThanks") == "18 apples."
    assert final_answer("first\nlast line\n") == "last line"


def test_exact_answer_reward():
    """final: boxed 42 = "42.0"; "answer is 1,000." = "1000"; "Answer: 41" != 42.  contains: 12 in "is 12
    apples" but not in "123 apples"."""
    final = exact_answer_reward()
    completions = ["so \\boxed{42}", "So the answer is 1,000.", "Answer: 41"]
    assert final([P] * 3, completions, answer=["42.0", "1000", "42"]) == [1.0, 1.0, 0.0]
    contains = exact_answer_reward("contains")
    assert contains([P] * 2, ["it is 12 apples", "I count 123 apples"], answer=["12", "12"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        exact_answer_reward("fuzzy")


def _const(name, values):
    def fn(prompts, completions, **_):
        return list(values)

    fn.__name__ = name
    return fn


def test_weighted_mix_hand_computed():
    """a = [1, 0, 2], b = [0.5, 0.5, 0.5]; 2a - b = [1.5, -0.5, 3.5]."""
    mix = weighted_mix([(_const("a", [1, 0, 2]), 2.0), (_const("b", [0.5, 0.5, 0.5]), -1.0)])
    out = mix.evaluate([P] * 3, ["x", "y", "z"])
    assert out.total == [1.5, -0.5, 3.5]
    assert out.components == {"a": [1.0, 0.0, 2.0], "b": [0.5, 0.5, 0.5]}
    assert mix([P] * 3, ["x", "y", "z"]) == [1.5, -0.5, 3.5]
    twice = weighted_mix([(_const("a", [1]), 1.0), (_const("a", [3]), 0.5)])
    assert twice.evaluate([P], ["x"]).components == {"a": [1.0], "a#2": [3.0]}
    with pytest.raises(ValueError, match="weight of reward 'a'"):
        weighted_mix([(_const("a", [1]), float("nan"))])
    with pytest.raises(ValueError, match="at least one"):
        weighted_mix([])


@pytest.mark.parametrize(
    "values, message",
    [([1.0, math.nan], "returned nan for sample 1"), ([1.0, "2"], "non-number for sample 1"),
     ([1.0], "returned 1 values for 2 completions"), ([None, 1.0], "non-number for sample 0"),
     ([math.inf, 0.0], "returned inf")],
)
def test_bad_reward_values_name_the_function(values, message):
    mix = weighted_mix([(_const("good", [1.0, 1.0]), 1.0), (_const("flaky", values), 1.0)])
    with pytest.raises(RewardError, match=f"reward 'flaky'.*{message}"):
        mix([P, P], ["x", "y"])


def test_raising_reward_and_bad_fields():
    def broken(prompts, completions, **_):
        raise KeyError("answer")

    with pytest.raises(RewardError, match="reward 'broken' raised KeyError"):
        compute_rewards(broken, [P], ["x"])
    with pytest.raises(RewardError, match="field 'answer' must be a list of 2"):
        compute_rewards(_const("a", [1, 1]), [P, P], ["x", "y"], answer=["only one"])
    with pytest.raises(RewardError, match="1 prompts but 2 completions"):
        compute_rewards(_const("a", [1, 1]), [P], ["x", "y"])


def test_reward_model_reward_matches_score_conversations(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from novalign.models.reward import load_reward_model, score_conversations

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    prompts = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "a longer question here"}]]
    completions = ["hi there", "an answer"]
    reward = reward_model_reward(tmp_path / "rm", batch_size=1)
    expected = score_conversations(rm, tokenizer, [(p, {"role": "assistant", "content": c}) for p, c in zip(prompts, completions)])
    assert compute_rewards(reward, prompts, completions) == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 2


class JudgeBackend:
    """A backend (the client's Backend interface) that plays the judge: 8 when the reply contains the gold
    answer, else 2; a reply containing FAIL is refused (non-retryable), one containing GARBLE gets no score."""

    kind = "fake"
    model_name = "fake-judge"
    model_id = "fake-judge-v1"

    def __init__(self):
        self.requests = []

    async def generate(self, request):
        self.requests.append(request)
        text = request.messages[-1]["content"]
        reply, gold = text.split("REPLY:")[1].split("GOLD:")
        if "FAIL" in reply:
            raise BackendError("bad_request", "refused by the fake judge", retryable=False, status=400)
        score = "I cannot say" if "GARBLE" in reply else ("Score: 8" if gold.strip() in reply else "Score: 2")
        return BackendResponse(model=self.model_name, texts=[score], finish_reasons=["stop"], prompt_tokens=5,
                               completion_tokens=2)

    async def aclose(self):
        pass


TEMPLATE = "Question: {prompt}\nREPLY: {completion}\nGOLD: {answer}"


@pytest.fixture
def judge_client():
    backend = JudgeBackend()
    client = LLMClient(backend, no_cache=True, progress=False, print_usage=False, retry=RetryPolicy(max_attempts=1))
    yield client, backend
    client.close()


def test_llm_judge_reward(judge_client):
    client, backend = judge_client
    judge = llm_judge_reward(client, TEMPLATE)
    out = judge([P, P], ["it is 7", "it is 9"], answer=["7", "7"])
    assert out == [8.0, 2.0]
    assert backend.requests[0].temperature == 0.0
    assert backend.requests[0].messages == [{"role": "user", "content": "Question: q\nREPLY: it is 7\nGOLD: 7"}]
    scaled = weighted_mix([(llm_judge_reward(client, TEMPLATE, parse=lambda t: float(t.split(":")[1]) / 10), 1.0)])
    assert scaled([P], ["7"], answer=["7"]) == [pytest.approx(0.8)]
    with pytest.raises(RewardError, match="needs the field 'answer'"):
        judge([P], ["7"])


def test_llm_judge_failures_raise_by_default(judge_client):
    client, _ = judge_client
    judge = llm_judge_reward(client, TEMPLATE)
    with pytest.raises(RewardError, match=r"2 of 3 judgments failed \(first: sample 0: bad_request.*on_failure"):
        judge([P] * 3, ["FAIL", "7", "GARBLE"], answer=["7"] * 3)


def test_llm_judge_failure_value_is_counted_and_logged(judge_client, caplog):
    client, _ = judge_client
    judge = llm_judge_reward(client, TEMPLATE, on_failure=-1.0, name="judge")
    with caplog.at_level(logging.WARNING, logger="novalign.train.rl.rewards"):
        out = judge([P] * 3, ["FAIL", "7", "GARBLE"], answer=["7"] * 3)
        judge([P], ["GARBLE"], answer=["7"])
    assert out == [-1.0, 8.0, -1.0]
    assert (judge.num_failures, judge.num_judgments) == (3, 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "novalign.train.rl.rewards"]
    assert len(warnings) == 2 and "2 of 3 judgments failed and were scored -1.0" in warnings[0]
    assert "unparsable reply" in warnings[1]
    with pytest.raises(ValueError, match="on_failure"):
        llm_judge_reward(client, TEMPLATE, on_failure=float("nan"))


def test_array_results_are_accepted_and_scalars_refused():
    import torch

    def vector(prompts, completions, **_):
        return torch.tensor([1.0, 2.0])

    def scalar(prompts, completions, **_):
        return torch.tensor(1.0)

    assert compute_rewards(vector, [P, P], ["x", "y"]) == [1.0, 2.0]
    with pytest.raises(RewardError, match="one value per completion"):
        compute_rewards(scalar, [P], ["x"])


class ReaskBackend(JudgeBackend):
    """A judge whose first reply has no score ("let me think") and whose reply to any re-ask is "Score: 6"."""

    async def generate(self, request):
        self.requests.append(request)
        text = "Score: 6" if len(request.messages) > 1 else "let me think"
        return BackendResponse(model=self.model_name, texts=[text], finish_reasons=["stop"], prompt_tokens=5,
                               completion_tokens=2)


def test_llm_judge_reasks_through_the_eval_judge():
    """attempts=2: the unparsable first reply is re-asked in the same conversation with eval's re-ask template
    quoting the parse error, and the second reply's 6 is the reward (no failure). attempts=1 (the default): the
    first reply is final, a failure scored on_failure = 0."""
    backend = ReaskBackend()
    client = LLMClient(backend, no_cache=True, progress=False, print_usage=False, retry=RetryPolicy(max_attempts=1))
    try:
        judge = llm_judge_reward(client, TEMPLATE, attempts=2, on_failure=0.0)
        assert judge([P], ["7"], answer=["7"]) == [6.0]
        assert judge.num_failures == 0 and len(backend.requests) == 2
        reask = backend.requests[1].messages
        assert [m["role"] for m in reask] == ["user", "assistant", "user"] and reask[1]["content"] == "let me think"
        assert "no number in the judge's reply" in reask[2]["content"] and "Answer again" in reask[2]["content"]
        once = llm_judge_reward(client, TEMPLATE, on_failure=0.0)
        assert once([P], ["7"], answer=["7"]) == [0.0] and once.num_failures == 1 and len(backend.requests) == 3
    finally:
        client.close()


def test_llm_judge_template_keeps_literal_braces(judge_client):
    """The template is filled by eval's render: {answer} etc. are filled, a JSON example's braces stay as written
    (str.format would have raised on them)."""
    client, backend = judge_client
    judge = llm_judge_reward(client, 'Reply as {"score": N}. ' + TEMPLATE)
    assert judge([P], ["it is 7"], answer=["7"]) == [8.0]
    assert backend.requests[0].messages[0]["content"] == 'Reply as {"score": N}. Question: q\nREPLY: it is 7\nGOLD: 7'
