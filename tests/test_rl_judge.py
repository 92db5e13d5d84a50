"""The LLM-judge reward from the YAML config: parsing, scaling, templates, and GRPO against `novalign serve` over HTTP."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
from cli_server import health, served
from rl_helpers import rl_config, write_prompts

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
KEY = "judge-key"
TEMPLATE = "Rate the answer from 0 to 1000.\nQuestion: {prompt}\nAnswer: {response}\nGold: {answer}\nScore:"


def test_bracket_score_and_scale_by_hand():
    """"[[3]] ... Rating: [[7.5]]" -> the last bracket, 7.5; on scale 1..10 that is (7.5 - 1) / 9 = 0.7222...;
    1 -> 0, 10 -> 1; 11 and an unbracketed reply are failures (ValueError), not clamped."""
    from novalign.train.rl.rewards import bracket_score, last_number, scaled_score

    assert bracket_score("first [[3]], then Rating: [[ 7.5 ]]") == 7.5
    scaled = scaled_score(bracket_score, 1, 10)
    assert scaled("Rating: [[7.5]]") == pytest.approx(6.5 / 9)
    assert (scaled("[[1]]"), scaled("[[10]]")) == (0.0, 1.0)
    with pytest.raises(ValueError, match="outside the judge's scale"):
        scaled("[[11]]")
    with pytest.raises(ValueError, match=r"no \[\[score\]\]"):
        scaled("Rating: 7")
    assert scaled_score(last_number, 0, 1000)("score 250 of 1000? no: 250") == 0.25
    with pytest.raises(ValueError, match="low < high"):
        scaled_score(last_number, 5, 5)


def test_judge_component_config_is_validated(tmp_path):
    from novalign.config import (
        ConfigError,
        GRPOConfig,
        RewardComponentConfig,
        load_config,
    )
    from novalign.train.rl.inputs import judge_template

    llm = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    path = tmp_path / "c.yaml"
    path.write_text("rewards:\n  - {type: llm_judge, weight: 0.5}\n")
    with pytest.raises(ConfigError, match="needs `llm`"):
        load_config(GRPOConfig, path)
    with pytest.raises(ValueError, match="only apply to type: llm_judge"):
        RewardComponentConfig(type="exact_answer", template="{response}")
    with pytest.raises(ValueError, match="not both"):
        RewardComponentConfig(type="llm_judge", llm=llm, template="x", template_file="y")
    with pytest.raises(ValueError, match="low < high"):
        RewardComponentConfig(type="llm_judge", llm=llm, scale=(10, 1))
    bundled = judge_template(RewardComponentConfig(type="llm_judge", llm=llm))
    assert "{prompt}" in bundled and "{response}" in bundled and "[[N]]" in bundled
    (tmp_path / "t.txt").write_text("Q {prompt} A {response}")
    assert judge_template(RewardComponentConfig(type="llm_judge", llm=llm, template_file=str(tmp_path / "t.txt"))) == \
        "Q {prompt} A {response}"
    with pytest.raises(FileNotFoundError, match="template_file"):
        judge_template(RewardComponentConfig(type="llm_judge", llm=llm, template_file=str(tmp_path / "none.txt")))


@pytest.fixture(scope="module")
def judge_server(tiny_model_dir):
    """``novalign serve`` with the tiny model on a free loopback port (the judge); yields its ``.../v1`` URL."""
    with served(tiny_model_dir, "--api-key", KEY, "--set", "engine.max_batch_size=32", "--set",
                "engine.batch_wait_ms=10", name="judge", env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}) as url:
        yield url


def _served_requests(url: str) -> int:
    return health(url)["requests"]


def _judge(url: str, cache, **extra) -> dict:
    llm = {"backend": "openai", "base_url": url, "model": "judge", "api_key": KEY, "cache_path": str(cache),
           "max_attempts": 1, "timeout_s": 60, "progress": False}
    return {"type": "llm_judge", "name": "judge", "weight": 0.5, "llm": llm, "template": TEMPLATE,
            "parse": "last_number", "scale": [0, 1000], "max_tokens": 16, **extra}


def test_grpo_with_a_served_judge_logs_it_per_source_and_counts_failures(tiny_model_dir, judge_server, tmp_path):
    """3 GRPO iterations of 2 prompts x 2 responses, reward = 1.0 * exact_answer(contains "e") + 0.5 * judge, the
    judge being the tiny model behind `novalign serve` (real HTTP), parsed as its reply's last number on a
    0..1000 scale, on_failure = -1 (a value no parsed score can take).

    Checked against the judge's own replies, fetched again through the run's request cache: every sample's
    judge reward is last_number / 1000, or -1 exactly when the reply has no number in 0..1000; the per-iteration
    `reward_judge_failures` equals the count of those -1s; `reward_judge_mean` is their mean; the total is the
    weighted sum."""
    from novalign.config import RewardComponentConfig
    from novalign.llm import ChatRequest
    from novalign.train.grpo import run_grpo
    from novalign.train.rl.inputs import judge_from_config

    out, cache = tmp_path / "run", tmp_path / "judge-cache.sqlite"
    component = _judge(judge_server, cache, on_failure=-1.0)
    cfg = rl_config("grpo", tiny_model_dir, out, write_prompts(tmp_path / "p.jsonl"),
                    rollout={"prompts_per_iteration": 2, "n": 2}, train={"max_steps": 3, "sample_every": 1},
                    rewards=[{"type": "exact_answer", "mode": "contains", "weight": 1.0}, component])
    before = _served_requests(judge_server)
    history = run_grpo(cfg, console_print=lambda *_: None).history
    assert _served_requests(judge_server) - before >= 1  # the judgments went over HTTP (repeats come from the cache)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["step"] for r in history] == [1, 2, 3]

    judge = judge_from_config(RewardComponentConfig.model_validate(component))
    try:
        for record in history:
            step_rows = [r for r in rows if r["step"] == record["step"]]
            for r in step_rows:
                messages = judge.messages([{"role": "user", "content": r["prompt"]}], r["completion"], {"answer": "e"})
                reply = judge.client.chat(ChatRequest(messages, **judge.request_params)).text
                numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", reply)
                expected = float(numbers[-1]) / 1000 if numbers and 0 <= float(numbers[-1]) <= 1000 else -1.0
                assert r["reward_judge"] == pytest.approx(expected), (reply, r)
                assert r["reward"] == pytest.approx(r["reward_exact_answer_contains"] + 0.5 * r["reward_judge"])
            assert record["reward_judge_failures"] == sum(r["reward_judge"] == -1.0 for r in step_rows)
            assert record["reward_judge_mean"] == pytest.approx(sum(r["reward_judge"] for r in step_rows) / 4)
            assert "reward_exact_answer_contains_mean" in record
    finally:
        judge.close()
    print("judge failures per iteration:", [r["reward_judge_failures"] for r in history])


def test_unreachable_judge_is_counted_or_stops_the_run(tiny_model_dir, tmp_path):
    """A judge nobody listens on: with on_failure = 0 every judgment fails and is counted (4 per iteration), the
    judge's mean is exactly 0 and the rule reward is still logged; with on_failure unset the run stops with a
    RewardError naming the judge."""
    from novalign.train.rl.rewards import RewardError
    from novalign.train.grpo import run_grpo

    with socket.socket() as s:  # a port that was free a moment ago: connections are refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    prompts = write_prompts(tmp_path / "p.jsonl")
    rule = {"type": "exact_answer", "mode": "contains", "weight": 1.0}
    common = {"rollout": {"prompts_per_iteration": 2, "n": 2}, "train": {"max_steps": 1}}
    cfg = rl_config("grpo", tiny_model_dir, tmp_path / "a", prompts,
                    rewards=[rule, _judge(dead, tmp_path / "c.sqlite", on_failure=0.0)], **common)
    record = run_grpo(cfg, console_print=lambda *_: None).history[-1]
    assert record["reward_judge_failures"] == 4 and record["reward_judge_mean"] == 0.0
    assert record["reward_mean"] == pytest.approx(record["reward_exact_answer_contains_mean"])
    cfg = rl_config("grpo", tiny_model_dir, tmp_path / "b", prompts,
                    rewards=[rule, _judge(dead, tmp_path / "c.sqlite")], **common)
    with pytest.raises(RewardError, match=r"'judge': 4 of 4 judgments failed"):
        run_grpo(cfg, console_print=lambda *_: None)
