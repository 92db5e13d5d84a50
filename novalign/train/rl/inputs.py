"""What ``novalign grpo`` and ``novalign ppo`` feed on: prompt sets, the configured reward mix, scoring.

* :func:`load_prompts` / :func:`prompt_batch` -- the prompt set and each iteration's slice of it;
* :func:`build_reward` -- the weighted mix of the ``rewards`` config list (report section 2.1: rule-based
  verifiers, a reward model, an LLM judge), each component a :class:`~novalign.train.rl.rewards.RewardFn`;
* :func:`score_rollouts` -- every rollout's total reward, each component's rewards, and how many LLM
  judgments of this batch failed (per component), so a failed judgment is counted and logged, never a
  silent zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from novalign.config import RewardComponentConfig
from novalign.eval.judge import SCORE_PARSERS, load_template, scaled_score
from novalign.train.rl.rewards import (
    LLMJudgeReward,
    RewardFn,
    WeightedMix,
    compute_rewards,
    exact_answer_reward,
    llm_judge_reward,
    reward_model_reward,
    verifier_reward,
    weighted_mix,
)

__all__ = [
    "PromptRecord",
    "build_reward",
    "close_reward",
    "judge_from_config",
    "judge_template",
    "load_prompts",
    "prompt_batch",
    "score_rollouts",
]

PromptRecord = tuple[list[dict], dict[str, Any]]  # (messages ending in a user turn, fields for the rewards)


# the record fields each reward type reads: checked when the prompts are read, before any model is loaded
REWARD_FIELDS = {"exact_answer": ("answer",), "ifeval": ("instruction_id_list",), "constraints": ("constraints",)}


def required_fields(components: list[RewardComponentConfig]) -> tuple[str, ...]:
    """The prompt-record fields the configured reward components read (:data:`REWARD_FIELDS`)."""
    return tuple(dict.fromkeys(f for c in components for f in REWARD_FIELDS.get(c.type, ())))


def load_prompts(files: list[str], *, required: tuple[str, ...] = (), skip_invalid: bool = False,
                 console_print=print) -> list[PromptRecord]:
    """Prompt records: ``messages`` (a last assistant turn is dropped) or ``prompt`` (text or messages); every
    record must carry the ``required`` fields (those the rewards read), so a missing ``answer`` stops the run
    here rather than after the model loads and rolls out. With ``skip_invalid`` bad records are skipped and
    counted by reason instead.

    Raises:
        ValueError: no files, or no prompts in them. DataError: a malformed record (file, line and field named).
    """
    from novalign.data.chat import normalize_messages
    from novalign.data.io import DataError, SkipReport, iter_records

    if not files:
        raise ValueError("prompt_files is empty: give at least one JSONL or Parquet prompt file")
    out: list[PromptRecord] = []
    report = SkipReport()
    for path in files:
        for line, record in iter_records(path, skip=report if skip_invalid else None):
            try:
                out.append(_prompt_record(record, str(path), line, required, normalize_messages, DataError))
            except DataError as err:
                if not skip_invalid:
                    raise
                report.add(err)
    if report.total:
        console_print(report.summary())
    if not out:
        raise ValueError("no prompts in " + ", ".join(files))
    return out


def _prompt_record(record: dict, path: str, line: int, required: tuple[str, ...], normalize_messages, DataError):
    raw = record.get("messages", record.get("prompt"))
    if raw is None:
        raise DataError(path, line, None, "a prompt record needs `messages` or `prompt`", reason="no prompt")
    if not isinstance(raw, (str, list)):
        field = "messages" if "messages" in record else "prompt"
        raise DataError(path, line, field, f"must be a string or a list of messages, got {type(raw).__name__}",
                        reason="wrong prompt type")
    for name in required:
        if record.get(name) is None:
            raise DataError(path, line, name, "missing: a configured reward reads it", reason=f"no {name}")
    msgs = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
    # the chat validator insists on a final assistant turn: validate with a placeholder, then drop it
    ends_with_answer = bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant"
    checked = normalize_messages({"messages": msgs if ends_with_answer else msgs + [{"role": "assistant", "content": "."}]},
                                 path=path, line=line)
    from novalign.data.tools import check_tool_calls, normalize_tools

    fields = {k: v for k, v in record.items() if k not in ("messages", "prompt", "tools")}
    tools = normalize_tools(record.get("tools"), path=path, line=line)  # shown to the policy when it answers
    if tools is not None:
        check_tool_calls(checked, tools, path=path, line=line)
        fields["tools"] = tools
    return checked[:-1], fields


def prompt_batch(num_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices of ``iteration``: consecutive slices of a stream of per-epoch shuffles (pure function)."""
    out = []
    for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, offset = divmod(pos, num_prompts)
        order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


# ------------------------------------------------------------------ the reward mix


def judge_template(c: RewardComponentConfig) -> str:
    """The judge prompt of an ``llm_judge`` component: ``template``, else ``template_file``'s text, else the
    bundled 1-10 rating prompt (the judge template ``rl_rating``, ``novalign/assets/eval/templates/rl_rating.en.txt``)."""
    if c.template is not None:
        return c.template
    if c.template_file is not None:
        path = Path(c.template_file)
        if not path.is_file():
            raise FileNotFoundError(f"rewards: llm_judge template_file {str(path)!r} does not exist")
        return path.read_text(encoding="utf-8")
    return load_template("rl_rating", "en")


def judge_from_config(c: RewardComponentConfig, client: Any = None) -> LLMJudgeReward:
    """An :class:`~novalign.train.rl.rewards.LLMJudgeReward` from an ``llm_judge`` component: the reply is parsed
    (``[[N]]`` or the last number) and mapped from ``scale`` onto [0, 1]; an unparsable / out-of-scale reply
    is re-asked up to ``attempts`` tries in all; a failed request or a reply still unparsable raises, or
    scores ``on_failure`` and is counted (``num_failures``).

    ``client``: an :class:`~novalign.llm.client.LLMClient` to use; by default one is made from ``c.llm``
    (no progress bar, no usage table) and closed by :func:`close_reward`.
    """
    from novalign.llm.client import LLMClient

    if c.type != "llm_judge" or c.llm is None:
        raise ValueError("judge_from_config needs an llm_judge component with `llm`")
    template = judge_template(c)
    parse = scaled_score(SCORE_PARSERS[c.parse], *c.scale)
    client = client if client is not None else LLMClient.from_config(c.llm, progress=False, print_usage=False)
    return llm_judge_reward(client, template, parse, on_failure=c.on_failure, attempts=c.attempts,
                            name=c.name or "llm_judge", max_tokens=c.max_tokens)


def _component(c: RewardComponentConfig, device: str) -> RewardFn:
    if c.type == "exact_answer":
        fn = exact_answer_reward(c.mode)
    elif c.type == "ifeval":
        from novalign.eval.ifeval import ifeval_reward

        fn = verifier_reward(ifeval_reward, name="ifeval")
    elif c.type == "constraints":  # the constraint library shared with data synthesis and evaluation
        from novalign.eval.constraints import constraint_reward

        fn = verifier_reward(constraint_reward, name="constraints")
    elif c.type == "llm_judge":
        return judge_from_config(c)
    elif c.path is None:
        raise ValueError("a reward_model reward component needs `path` (a `novalign rm` output model directory)")
    else:
        fn = reward_model_reward(c.path, device=device)
    if c.name and hasattr(fn, "name"):
        fn.name = c.name
    elif c.name:
        fn.__name__ = c.name
    return fn


def build_reward(components: list[RewardComponentConfig], device: str = "cpu") -> WeightedMix:
    """The configured weighted mix; its :meth:`~novalign.train.rl.rewards.WeightedMix.evaluate` gives each component too."""
    if not components:
        raise ValueError("rewards is empty: configure at least one reward component")
    return weighted_mix([(_component(c, device), c.weight) for c in components])


def close_reward(mix: RewardFn) -> None:
    """Close the LLM clients of the judges in a mix built by :func:`build_reward` (it owns them)."""
    for _, fn, _ in getattr(mix, "components", []):
        if isinstance(fn, LLMJudgeReward):
            fn.close()


# ------------------------------------------------------------------ scoring


def _judge_failures(mix: RewardFn) -> dict[str, int]:
    """Cumulative failed judgments of each LLM-judge component of ``mix`` (by the mix's component name)."""
    if isinstance(mix, WeightedMix):
        return {name: fn.num_failures for name, fn, _ in mix.components if isinstance(fn, LLMJudgeReward)}
    return {getattr(mix, "name", "llm_judge"): mix.num_failures} if isinstance(mix, LLMJudgeReward) else {}


def score_rollouts(mix: RewardFn, chosen: list[PromptRecord], rollouts: list) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """Total reward of every rollout, each component's rewards when ``mix`` is a :class:`WeightedMix`, and the
    number of this batch's judgments that failed, per LLM-judge component (scored ``on_failure`` instead).

    Each rollout's prompt record fields (``answer``, ...) go to the rewards, ``None`` where a record lacks one.
    Raises :class:`~novalign.train.rl.rewards.RewardError` for a reward that fails or returns a non-number.
    """
    owners = [chosen[r.prompt_index] for r in rollouts]
    keys = sorted({k for _, fields in chosen for k in fields})
    fields = {k: [f.get(k) for _, f in owners] for k in keys}
    prompts, texts = [m for m, _ in owners], [r.text for r in rollouts]
    before = _judge_failures(mix)
    if isinstance(mix, WeightedMix):
        scored = mix.evaluate(prompts, texts, **fields)
        totals, parts = scored.total, scored.components
    else:
        totals, parts = compute_rewards(mix, prompts, texts, **fields), {}
    failures = {name: count - before[name] for name, count in _judge_failures(mix).items()}
    return totals, parts, failures
