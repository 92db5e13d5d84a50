"""Reward functions for RL: verifiers, a reward model, an LLM judge, and weighted mixes of them.

Every reward is a :class:`RewardFn`: called with a batch of prompts (chat messages), their completions
(strings) and any per-sample fields of the prompt set (``answer``, ``instruction_id_list``, ...), each a
list as long as the batch, it returns one float per completion::

    reward = weighted_mix([(verifier_reward(ifeval_reward), 1.0), (exact_answer_reward(), 0.5)])
    totals = reward(prompts, completions, instruction_id_list=[...], kwargs=[...], answer=[...])

The adapters turn the pieces the rest of novalign already has into that shape, unchanged:

* :func:`verifier_reward` -- any plain ``(response, **fields) -> bool | float`` function, e.g. the
  evaluation verifiers of :mod:`novalign.eval.ifeval` (RL rewards reuse the evaluators);
* :func:`exact_answer_reward` -- gold answer contained in / equal to the final answer;
* :func:`reward_model_reward` -- a reward model trained by ``novalign rm``;
* :func:`llm_judge_reward` -- a judge model through :class:`~novalign.llm.client.LLMClient`.

Bad rewards are never passed on silently: :func:`compute_rewards` (which :class:`WeightedMix` uses) raises
a :class:`RewardError` naming the function when it raises, returns the wrong number of values, a
non-number or a NaN / infinity. A failed LLM judgment raises too, unless the judge was given an explicit
``on_failure`` value -- then it is substituted, counted and logged as a warning.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "math_answer_reward",
    "LLMJudgeReward",
    "MixedRewards",
    "RewardError",
    "RewardFn",
    "RewardModelReward",
    "WeightedMix",
    "answer_contained",
    "answer_equal",
    "bracket_score",
    "compute_rewards",
    "exact_answer_reward",
    "final_answer",
    "last_number",
    "llm_judge_reward",
    "normalize_answer",
    "reward_model_reward",
    "reward_name",
    "scaled_score",
    "verifier_reward",
    "weighted_mix",
]

log = logging.getLogger("novalign.train.rl.rewards")

Messages = list[dict]


class RewardFn(Protocol):
    """``(prompts, completions, **sample_fields) -> rewards``: one float per completion.

    ``sample_fields`` are per-sample lists (as long as ``completions``); a reward reads the ones it needs
    and must accept (and ignore) the others.
    """

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]: ...


class RewardError(ValueError):
    """A reward function failed or returned something that is not one finite number per completion."""


def reward_name(fn: Any) -> str:
    """A readable name for logs and errors: ``fn.name``, ``fn.__name__`` or the class name."""
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _as_reward(value: Any, name: str, index: int) -> float:
    """``value`` as a finite float (bools count as 0 / 1), or a :class:`RewardError` naming ``name``."""
    if isinstance(value, bool):
        return float(value)
    number = None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__float__"):  # int, float, numpy / 0-d torch
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None:
        raise RewardError(f"reward {name!r} returned a non-number for sample {index}: {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise RewardError(f"reward {name!r} returned {number} for sample {index}; rewards must be finite numbers")
    return number


def _check_fields(name: str, num: int, fields: Mapping[str, Any]) -> None:
    for key, values in fields.items():
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or len(values) != num:
            got = len(values) if isinstance(values, Sequence) else type(values).__name__
            raise RewardError(f"reward {name!r}: sample field {key!r} must be a list of {num} values (one per "
                              f"completion), got {got}")


def compute_rewards(fn: RewardFn, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
    """Call ``fn`` and check its result: exactly one finite number per completion.

    Raises:
        RewardError: the inputs disagree in length, ``fn`` raised, or it returned a wrong-length list, a
            non-number, NaN or an infinity -- the message names the reward function.
    """
    name = reward_name(fn)
    if len(prompts) != len(completions):
        raise RewardError(f"reward {name!r}: {len(prompts)} prompts but {len(completions)} completions")
    _check_fields(name, len(completions), sample_fields)
    try:
        values = fn(prompts, completions, **sample_fields)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise RewardError(f"reward {name!r} must return a list of floats, got {type(values).__name__}")
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if not isinstance(values, list):  # a 0-d array / tensor
        raise RewardError(f"reward {name!r} must return one value per completion, got a scalar {values!r}")
    if len(values) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
    return [_as_reward(v, name, i) for i, v in enumerate(values)]


# ------------------------------------------------------------------------------------ verifiers


def verifier_reward(verifier: Callable[..., Any], *, name: str | None = None,
                    fields: Mapping[str, str] | None = None) -> RewardFn:
    """A :class:`RewardFn` from a plain per-sample verifier ``verifier(response, **named_fields)``.

    The verifier's first parameter receives the completion; every further parameter is filled, by name,
    from the sample field of the same name (``fields`` renames: ``{"parameter": "field"}``). A parameter
    called ``prompt`` that no field provides receives the sample's prompt messages. Parameters with
    defaults are passed only when the field is present; a verifier with ``**kwargs`` gets every field.
    ``True`` / ``False`` become 1.0 / 0.0. For example, IFEval's ``ifeval_reward(response,
    instruction_id_list, kwargs)`` plugs in unchanged and reads the fields ``instruction_id_list`` and
    ``kwargs``.

    Raises (when called):
        RewardError: a required field is missing, or the verifier returned a non-number for a sample.
    """
    params = list(inspect.signature(verifier).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ValueError(f"verifier {reward_name(verifier)!r} must take the response as its first positional parameter")
    named = [p for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
    renames = dict(fields or {})
    label = name or reward_name(verifier)

    def reward(prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        _check_fields(label, len(completions), sample_fields)
        columns: dict[str, Sequence[Any]] = {}
        for p in named:
            source = renames.get(p.name, p.name)
            if source in sample_fields:
                columns[p.name] = sample_fields[source]
            elif p.name == "prompt":
                columns[p.name] = prompts
            elif p.default is p.empty:
                raise RewardError(f"reward {label!r} needs the per-sample field {source!r} (parameter {p.name!r} of "
                                  f"{reward_name(verifier)}); the batch has {sorted(sample_fields) or 'no fields'}")
        if takes_all:
            columns = {k: v for k, v in sample_fields.items() if k not in columns} | columns
        return [_as_reward(verifier(c, **{k: v[i] for k, v in columns.items()}), label, i)
                for i, c in enumerate(completions)]

    reward.__name__ = label
    return reward


_BOXED = re.compile(r"\\boxed\{")
_MARKED = re.compile(r"(?:####|\banswer\s*(?:is|:)\s*:?)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:,\d{3})*|\d*)(?:\.\d+)?$")


def normalize_answer(text: str) -> str:
    """Lower case, whitespace collapsed, ``$`` and surrounding punctuation / quotes stripped, numbers in
    canonical form (``"1,000.50"`` -> ``"1000.5"``, ``"3.0"`` -> ``"3"``)."""
    s = " ".join(str(text).replace("$", "").split()).lower().strip(" \t.,;:!?\"'`*()[]")
    if s and _NUMBER.match(s) and any(ch.isdigit() for ch in s):
        value = float(s.replace(",", ""))
        s = str(int(value)) if value.is_integer() else repr(value)
    return s


def _boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def final_answer(response: str) -> str:
    """The response's final answer: the last ``\\boxed{...}``, else what follows the last ``####`` /
    ``answer is`` / ``answer:``, else the last non-empty line (first line of the marked part only)."""
    boxed = _boxed(response)
    if boxed is not None:
        return boxed
    marked = _MARKED.findall(response)
    if marked:
        return marked[-1].strip().splitlines()[0]
    lines = [line for line in response.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def answer_equal(response: str, answer: str) -> bool:
    """The response's :func:`final_answer` equals the gold ``answer`` after :func:`normalize_answer`."""
    return normalize_answer(final_answer(response)) == normalize_answer(answer)


def answer_contained(response: str, answer: str) -> bool:
    """The normalized gold ``answer`` occurs in the normalized response as a whole token sequence
    (``"12"`` is not found in ``"123"``)."""
    gold = normalize_answer(answer)
    if not gold:
        return False
    words = [normalize_answer(w) for w in response.split()]
    text = " " + " ".join(w for w in words if w) + " "
    return f" {gold} " in text


def exact_answer_reward(mode: str = "final") -> RewardFn:
    """1.0 when the completion gets the per-sample field ``answer`` right, else 0.0.

    ``mode="final"``: the final answer (:func:`final_answer`) equals the gold one; ``mode="contains"``: the
    gold answer appears anywhere in the completion. Both compare :func:`normalize_answer` forms.
    """
    checks = {"final": answer_equal, "contains": answer_contained}
    if mode not in checks:
        raise ValueError(f"exact_answer_reward mode must be one of {sorted(checks)}, got {mode!r}")
    return verifier_reward(checks[mode], name=f"exact_answer_{mode}")


def math_answer_reward(*, timeout: int | None = 5, name: str = "math_answer") -> RewardFn:
    """1.0 when the completion's math answer (:func:`novalign.eval.math.extract_answer`: last ``\\boxed{}``,
    ``####``, "the answer is", last number) is equivalent to the per-sample field ``answer``
    (:func:`~novalign.eval.math.answers_equivalent`: ``\\frac{1}{2}`` == ``0.5``, sets, intervals...), else 0.0.
    A GSM8K-style gold solution ending in ``#### 72`` is reduced to its answer first."""
    from novalign.eval.math import answers_equivalent, extract_answer, gold_answer

    def math_answer(response: str, answer: str) -> bool:
        return answers_equivalent(extract_answer(response), gold_answer(answer), timeout=timeout)

    return verifier_reward(math_answer, name=name)


# ------------------------------------------------------------------------------------ reward model


class RewardModelReward:
    """A reward model's score of each ``(prompt, completion)``, tokenized exactly as in RM training."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 4096, batch_size: int = 16,
                 name: str = "reward_model"):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.name = max_length, batch_size, name

    def __call__(self, prompts: list[Messages], completions: list[str], **_: Any) -> list[float]:
        from novalign.models.reward import score_conversations

        conversations = [(p, {"role": "assistant", "content": c}) for p, c in zip(prompts, completions, strict=True)]
        return score_conversations(self.model, self.tokenizer, conversations, max_length=self.max_length,
                                   batch_size=self.batch_size)


def reward_model_reward(model_dir: Any, *, tokenizer: Any = None, device: str = "cpu", dtype: str = "float32",
                        max_length: int = 4096, batch_size: int = 16, name: str = "reward_model") -> RewardModelReward:
    """A :class:`RewardFn` scoring with the reward model in ``model_dir`` (a ``novalign rm`` output).

    The model is loaded once (:func:`~novalign.models.reward.load_reward_model`, eval mode); ``tokenizer``
    defaults to the one saved beside it.
    """
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model

    tok = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = load_reward_model(model_dir, dtype=dtype, pad_token_id=pad, device=device).eval()
    return RewardModelReward(model, tok, max_length=max_length, batch_size=batch_size, name=name)


# ------------------------------------------------------------------------------------ LLM judge

_LAST_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def last_number(text: str) -> float:
    """The last number in a judge's reply (ask the judge to end with the score: ``"7/10"`` parses as 10).

    Raises:
        ValueError: the reply has no number.
    """
    found = _LAST_NUMBER.findall(text)
    if not found:
        raise ValueError(f"no number in the judge's reply: {text[:200]!r}")
    return float(found[-1])


_BRACKETED = re.compile(r"\[\[\s*([-+]?\d+(?:\.\d+)?)\s*\]\]")


def bracket_score(text: str) -> float:
    """The last ``[[number]]`` in a judge's reply (MT-Bench's "Rating: [[7]]" convention, Zheng et al. 2023,
    https://arxiv.org/abs/2306.05685): ``"... [[3]] ... Rating: [[7.5]]"`` -> 7.5.

    Raises:
        ValueError: the reply has no ``[[number]]``.
    """
    found = _BRACKETED.findall(text)
    if not found:
        raise ValueError(f"no [[score]] in the judge's reply: {text[:200]!r}")
    return float(found[-1])


def scaled_score(parse: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    """``parse`` followed by the linear map of the judge's scale ``[low, high]`` onto ``[0, 1]``:
    ``(score - low) / (high - low)`` (scale 1..10: 1 -> 0, 5.5 -> 0.5, 10 -> 1).

    A score outside ``[low, high]`` is not clamped: it raises ``ValueError`` (a failed judgment, which the
    judge counts), since a judge that leaves its scale did not follow the prompt.
    """
    if not high > low:
        raise ValueError(f"the judge's scale needs low < high, got [{low}, {high}]")

    def scaled(text: str) -> float:
        score = parse(text)
        if not low <= score <= high:
            raise ValueError(f"score {score} outside the judge's scale [{low}, {high}]")
        return (score - low) / (high - low)

    scaled.__name__ = f"scaled_{getattr(parse, '__name__', 'parse')}"
    return scaled


def _render_prompt(messages: Messages) -> str:
    """A conversation as judge-readable text: the bare content of a single user turn, else ``role: content`` lines."""
    if len(messages) == 1:
        return str(messages[0].get("content", ""))
    return "\n\n".join(f"{m['role']}: {m.get('content', '')}" for m in messages)


class LLMJudgeReward:
    """Rewards from an LLM judge; see :func:`llm_judge_reward`. ``num_failures`` counts substituted judgments."""

    def __init__(self, client: Any, template: str | Callable[..., Messages], parse: Callable[[str], float], *,
                 on_failure: float | None = None, name: str = "llm_judge", **request_params: Any):
        if on_failure is not None and not (isinstance(on_failure, (int, float)) and math.isfinite(on_failure)):
            raise ValueError(f"on_failure must be None (raise) or a finite number, got {on_failure!r}")
        self.client, self.template, self.parse = client, template, parse
        self.on_failure, self.name = on_failure, name
        self.request_params = {"temperature": 0.0} | request_params
        self.num_failures = 0  # judgments replaced by on_failure, over this object's life
        self.num_judgments = 0

    def messages(self, prompt: Messages, completion: str, fields: dict[str, Any]) -> Messages:
        if callable(self.template):
            return self.template(prompt, completion, **fields)
        try:
            text = self.template.format(**{**fields, "prompt": _render_prompt(prompt), "completion": completion,
                                           "response": completion})
        except KeyError as exc:
            raise RewardError(f"reward {self.name!r}: the judge template needs the field {exc.args[0]!r}") from exc
        return [{"role": "user", "content": text}]

    def close(self) -> None:
        """Close the judge's client (for a judge that owns it, e.g. one built from a config)."""
        self.client.close()

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        from novalign.llm.types import ChatRequest

        _check_fields(self.name, len(completions), sample_fields)
        requests = [
            ChatRequest(self.messages(p, c, {k: v[i] for k, v in sample_fields.items()}), **self.request_params)
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        results = self.client.run_batch(requests, progress=False)
        rewards, failures = [], []
        for i, result in enumerate(results):
            if result.ok:
                try:
                    rewards.append(_as_reward(self.parse(result.text), self.name, i))
                    continue
                except (ValueError, TypeError) as exc:
                    reason = f"unparsable reply: {exc}"
            else:
                reason = str(result)
            failures.append((i, reason))
            rewards.append(self.on_failure)
        self.num_judgments += len(results)
        if failures:
            first = f"sample {failures[0][0]}: {failures[0][1]}"
            if self.on_failure is None:
                raise RewardError(f"reward {self.name!r}: {len(failures)} of {len(results)} judgments failed (first: "
                                  f"{first}); pass on_failure=<value> to score failed judgments instead")
            self.num_failures += len(failures)
            log.warning("reward %r: %d of %d judgments failed and were scored %s (%d failed so far; first: %s)",
                        self.name, len(failures), len(results), self.on_failure, self.num_failures, first)
        return rewards


def llm_judge_reward(client: Any, template: str | Callable[..., Messages], parse: Callable[[str], float] = last_number,
                     *, on_failure: float | None = None, name: str = "llm_judge", **request_params: Any) -> LLMJudgeReward:
    """A :class:`RewardFn` that asks an LLM judge (through ``client``, an :class:`~novalign.llm.client.LLMClient`).

    Args:
        template: a ``str.format`` template rendered into one user message, with ``{prompt}`` (the
            conversation as text), ``{completion}`` (or its alias ``{response}``) and any sample field (``{answer}``, ...); or a callable
            ``(prompt_messages, completion, **fields) -> messages``.
        parse: the judge's reply text -> reward (raise ``ValueError`` for a reply that has none).
        on_failure: ``None`` (default): a failed request (:class:`~novalign.llm.types.Failure`) or an
            unparsable reply raises :class:`RewardError`. A number: that reward is used instead, and every
            such substitution is counted (``num_failures``) and logged as a warning.
        request_params: :class:`~novalign.llm.types.ChatRequest` fields (default ``temperature=0``).
    """
    return LLMJudgeReward(client, template, parse, on_failure=on_failure, name=name, **request_params)


# ------------------------------------------------------------------------------------ weighted mix


@dataclass
class MixedRewards:
    """The mix's rewards per completion, and each component's unweighted rewards (for logging)."""

    total: list[float]
    components: dict[str, list[float]]


class WeightedMix:
    """``r = sum_c w_c * r_c`` over reward components; see :func:`weighted_mix`."""

    def __init__(self, components: Sequence[tuple[RewardFn, float]], name: str = "weighted_mix"):
        if not components:
            raise ValueError("weighted_mix needs at least one (reward_fn, weight) pair")
        self.name = name
        self.components: list[tuple[str, RewardFn, float]] = []
        seen: dict[str, int] = {}
        for item in components:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and callable(item[0])):
                raise ValueError(f"weighted_mix takes (reward_fn, weight) pairs, got {item!r}")
            fn, weight = item
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"the weight of reward {reward_name(fn)!r} must be a finite number, got {weight!r}")
            base = reward_name(fn)
            seen[base] = seen.get(base, 0) + 1
            self.components.append((base if seen[base] == 1 else f"{base}#{seen[base]}", fn, float(weight)))

    def evaluate(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> MixedRewards:
        """Every component's rewards (each checked by :func:`compute_rewards`) and their weighted sum."""
        parts = {name: compute_rewards(fn, prompts, completions, **sample_fields) for name, fn, _ in self.components}
        total = [sum(w * parts[name][i] for name, _, w in self.components) for i in range(len(completions))]
        return MixedRewards(total, parts)

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        return self.evaluate(prompts, completions, **sample_fields).total


def weighted_mix(components: Sequence[tuple[RewardFn, float]], name: str = "weighted_mix") -> WeightedMix:
    """A :class:`RewardFn` that is the weighted sum of ``components``: ``[(reward_fn, weight), ...]``.

    Call it for the totals, or :meth:`WeightedMix.evaluate` for the totals plus each component's own rewards
    (keyed by the component's name; a repeated name gets ``#2``, ``#3``...).
    """
    return WeightedMix(components, name)
