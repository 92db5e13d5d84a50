"""An LLM judge as an RL reward, built on the evaluation judge (:mod:`novalign.eval.judge`).

One judging path for evaluation and RL: the template is filled by :func:`~novalign.eval.judge.render`, the
judge is asked (batched, greedy) by :func:`~novalign.eval.judge.ask_judge`, its reply is parsed by one of the
judge's score parsers (:data:`~novalign.eval.judge.SCORE_PARSERS`, mapped onto [0, 1] by
:func:`~novalign.eval.judge.scaled_score`), and a malformed reply can be re-asked with the parse error
quoted (``attempts``). What is RL's own is the failure policy: a failed judgment raises, unless the judge
was given an explicit ``on_failure`` value -- then it is substituted, counted and logged as a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from novalign.eval.judge import JudgeParseError, TemplateError, ask_judge, last_number, render
from novalign.train.rl.rewards.base import Messages, RewardError, as_reward, check_fields, log

__all__ = ["LLMJudgeReward", "conversation_text", "llm_judge_reward"]


def conversation_text(messages: Messages) -> str:
    """A conversation as judge-readable text: the bare content of a single turn, else ``role: content`` blocks."""
    if len(messages) == 1:
        return str(messages[0].get("content", ""))
    return "\n\n".join(f"{m['role']}: {m.get('content', '')}" for m in messages)


class LLMJudgeReward:
    """Rewards from an LLM judge; see :func:`llm_judge_reward`. ``num_failures`` counts substituted judgments."""

    def __init__(self, client: Any, template: str | Callable[..., Messages], parse: Callable[[str], float], *,
                 on_failure: float | None = None, attempts: int = 1, name: str = "llm_judge", **request_params: Any):
        if on_failure is not None and not (isinstance(on_failure, (int, float)) and math.isfinite(on_failure)):
            raise ValueError(f"on_failure must be None (raise) or a finite number, got {on_failure!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.client, self.template, self.parse = client, template, parse
        self.on_failure, self.attempts, self.name = on_failure, attempts, name
        self.request_params = {"temperature": 0.0} | request_params
        self.num_failures = 0  # judgments replaced by on_failure, over this object's life
        self.num_judgments = 0

    def messages(self, prompt: Messages, completion: str, fields: dict[str, Any]) -> Messages:
        """The judge's conversation for one sample: the template filled with ``{prompt}``, ``{completion}``
        (alias ``{response}``) and the sample's fields, as one user message (or the callable template's messages)."""
        if callable(self.template):
            return self.template(prompt, completion, **fields)
        values = {**fields, "prompt": conversation_text(prompt), "completion": completion, "response": completion}
        try:
            return [{"role": "user", "content": render(self.template, **values)}]
        except TemplateError as exc:
            names = ", ".join(repr(m) for m in exc.missing)
            raise RewardError(f"reward {self.name!r}: the judge template needs the field{'s' * (len(exc.missing) > 1)} "
                              f"{names}; the batch has {sorted(fields) or 'no fields'}") from exc

    def _score(self, text: str, index: int) -> float:
        """``parse`` checked to a finite number; anything else is a parse error (re-asked, then a failure)."""
        try:
            return as_reward(self.parse(text), self.name, index)
        except TypeError as exc:
            raise JudgeParseError(str(exc)) from exc

    def close(self) -> None:
        """Close the judge's client (for a judge that owns it, e.g. one built from a config)."""
        self.client.close()

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        check_fields(self.name, len(completions), sample_fields)
        conversations = [self.messages(p, c, {k: v[i] for k, v in sample_fields.items()})
                         for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        parsers = [partial(self._score, index=i) for i in range(len(conversations))]
        judgments = ask_judge(self.client, conversations, parsers, attempts=self.attempts,
                              request_params=self.request_params)
        rewards, failures = [], []
        for i, judgment in enumerate(judgments):
            if not judgment.failed:
                rewards.append(judgment.parsed)
                continue
            reason = str(judgment.failure) if judgment.failure is not None else f"unparsable reply: {judgment.error}"
            failures.append((i, reason))
            rewards.append(self.on_failure)
        self.num_judgments += len(judgments)
        if failures:
            first = f"sample {failures[0][0]}: {failures[0][1]}"
            if self.on_failure is None:
                raise RewardError(f"reward {self.name!r}: {len(failures)} of {len(judgments)} judgments failed (first: "
                                  f"{first}); pass on_failure=<value> to score failed judgments instead")
            self.num_failures += len(failures)
            log.warning("reward %r: %d of %d judgments failed and were scored %s (%d failed so far; first: %s)",
                        self.name, len(failures), len(judgments), self.on_failure, self.num_failures, first)
        return rewards


def llm_judge_reward(client: Any, template: str | Callable[..., Messages], parse: Callable[[str], float] = last_number,
                     *, on_failure: float | None = None, attempts: int = 1, name: str = "llm_judge",
                     **request_params: Any) -> LLMJudgeReward:
    """A :class:`RewardFn` that asks an LLM judge (through ``client``, an :class:`~novalign.llm.client.LLMClient`).

    Args:
        template: a template rendered into one user message (:func:`novalign.eval.judge.render`: every
            ``{name}`` is filled, other braces are left as written), with ``{prompt}`` (the conversation as
            text), ``{completion}`` (or its alias ``{response}``) and any sample field (``{answer}``, ...); or
            a callable ``(prompt_messages, completion, **fields) -> messages``.
        parse: the judge's reply text -> reward (raise ``ValueError`` for a reply that has none); e.g.
            ``scaled_score(bracket_score, 1, 10)`` from :mod:`novalign.eval.judge`.
        on_failure: ``None`` (default): a failed request (:class:`~novalign.llm.types.Failure`) or an
            unparsable reply raises :class:`RewardError`. A number: that reward is used instead, and every
            such substitution is counted (``num_failures``) and logged as a warning.
        attempts: tries per judgment; above 1 an unparsable reply is re-asked in the same conversation,
            quoting the parse error (the judge's ``reask`` template). Default 1: each re-ask is one more
            round trip inside a training iteration, and a failure is counted anyway.
        request_params: :class:`~novalign.llm.types.ChatRequest` fields (default ``temperature=0``).
    """
    return LLMJudgeReward(client, template, parse, on_failure=on_failure, attempts=attempts, name=name,
                          **request_params)
