"""The three AutoRators of report section 3.3, chosen per prompt by its labels.

    "1) Absolute score: Judge the absolute evaluate score for tasks with open responses like Writing, Open QA
    and etc. 2) Pair comparison: Judge if the two response have the similar thought chain and same result. For
    tasks which have specific answers like Math, Reasoning. 3) Golden Answer: Judge the absolute evaluate score
    with respect to the golden answer for datasets which have golden answers."

Each is an editable template (``novalign/assets/eval/templates/autorator_{absolute,pairwise,golden}.{en,zh}.txt``,
or the same names in your ``template_dir``) asked through :func:`novalign.eval.judge.ask_judge` -- strict
parsing, re-asks quoting the error, a judgment that still fails is a failure, never a guess.

* absolute / golden: exactly one ``[[N]]`` in 1..10 (:func:`~novalign.eval.judge.parse_rating`), mapped onto
  [0, 1] as ``(N - 1) / 9``;
* pairwise: every two responses of a group, exactly one ``[[SAME]]`` or ``[[DIFFERENT]]``
  (:func:`parse_same`); the "same" edges join responses into agreeing clusters (:func:`clusters`, union-find,
  so agreement is made transitive), and each response scores its cluster's share of the group (the
  self-consistency of its answer; the report does not say how clusters become scores -- this is our choice);
* golden with rule checkers standing in "where they apply": a record with a world ``check`` spec is graded by
  :func:`novalign.world.checkers.score`; a Math prompt with a reference answer by math-verify
  (:func:`novalign.eval.math.answers_equivalent`) -- the report's "for some math and reasoning data with golden
  answers, we find the LLM-as-Judge score is good enough and directly use them" made exact.

Routing (:func:`rater_for`): an explicit ``routes`` entry for the prompt's ability wins; else a record with a
reference answer (or a check spec) gets golden; else an ability in ``pairwise_abilities`` gets pairwise; else
absolute.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.flywheel.responses import get_path

__all__ = ["AutoRateConfig", "RATERS", "parse_same", "clusters", "cluster_scores", "rater_for", "rule_score",
           "rating_to_unit", "plan_group", "assemble_group"]

RATERS = ("absolute", "pairwise", "golden")
Rater = Literal["absolute", "pairwise", "golden"]


class AutoRateConfig(Strict):
    """Which AutoRator rates a group, and how (report section 3.3)."""

    ability_field: str = Field("labels.ability", description="Dotted path of the prompt's ability label.")
    language_field: str = Field("labels.language", description="Dotted path of its language: zh* -> Chinese templates.")
    reference_field: str = Field("answer", description="Dotted path of a golden answer (golden rater when present).")
    check_field: str = Field("check", description="Dotted path of a world check spec (a rule checker grades it).")
    pairwise_abilities: list[str] = Field(["Math", "Reason"], description="Abilities with definite answers.")
    math_abilities: list[str] = Field(["Math"], description="Abilities whose reference math-verify can check.")
    routes: dict[str, Rater] = Field(default_factory=dict, description="ability -> rater, over the default rule.")
    rules: bool = Field(True, description="Let rule checkers (check specs, math-verify) stand in for the golden judge.")
    lang: Literal["en", "zh", "auto"] = Field("auto", description="Template language; auto: from language_field.")
    template_dir: str | None = Field(None, description="Folder of your own autorator_*.<lang>.txt templates.")
    attempts: int = Field(3, ge=1, description="Tries per judgment (the first ask plus re-asks).")
    max_tokens: int | None = Field(512, ge=1)
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm (the judge).")
    drop_failed: bool = Field(True, description="Drop a group with a failed judgment (counted, raw replies in "
                              "drops.jsonl); false: keep it with `rating_error` and no scores.")


# ---------------------------------------------------------------------------------------------- parsing

_SAME = re.compile(r"\[\[\s*(SAME|DIFFERENT|相同|不同)\s*\]\]", re.IGNORECASE)


def parse_same(text: str) -> bool:
    """True for ``[[SAME]]`` (or ``[[相同]]``), False for ``[[DIFFERENT]]`` (``[[不同]]``); exactly one verdict.

    Accepts: ``"Both get 12 by adding. [[SAME]]"`` -> True; ``"[[different]]"`` -> False.
    Rejects: ``"same"`` (no brackets), ``"[[SAME]] or [[DIFFERENT]]"`` (two verdicts).
    """
    from novalign.eval.judge import JudgeParseError

    found = {m.upper() if m.isascii() else ("SAME" if m == "相同" else "DIFFERENT") for m in _SAME.findall(text)}
    if len(found) != 1:
        problem = "no verdict" if not found else "both verdicts"
        raise JudgeParseError(f'{problem}; end with exactly one of "[[SAME]]" or "[[DIFFERENT]]"')
    return found.pop() == "SAME"


def rating_to_unit(text: str) -> float:
    """An AutoRator rating ``[[N]]`` (1..10, exactly one) on [0, 1]: ``(N - 1) / 9`` (``[[10]]`` -> 1.0)."""
    from novalign.eval.judge import parse_rating

    return (parse_rating(text, low=1, high=10) - 1) / 9


# ------------------------------------------------------------------------------------------- clustering


def clusters(n: int, same: dict[tuple[int, int], bool]) -> list[int]:
    """Cluster label of each of ``n`` responses from pairwise "same" verdicts (union-find over the True edges).
    Labels number clusters by their first member: response 0 is in cluster 0.

    >>> clusters(4, {(0, 1): False, (0, 2): True, (1, 3): True, (2, 3): False})
    [0, 1, 0, 1]
    """
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (i, j), verdict in sorted(same.items()):
        if verdict:
            a, b = find(i), find(j)
            parent[max(a, b)] = min(a, b)
    labels: dict[int, int] = {}
    return [labels.setdefault(find(i), len(labels)) for i in range(n)]


def cluster_scores(labels: Sequence[int]) -> list[float]:
    """Each response's cluster share of the group: ``|cluster| / n`` (``[0, 1, 0, 0]`` -> ``[.75, .25, .75, .75]``)."""
    n = len(labels)
    return [sum(1 for m in labels if m == c) / n for c in labels]


# -------------------------------------------------------------------------------------------- routing


def rater_for(record: dict, cfg: AutoRateConfig) -> Rater:
    """The AutoRator for a prompt (see the module docstring for the rule)."""
    ability = get_path(record, cfg.ability_field)
    if isinstance(ability, str) and ability in cfg.routes:
        return cfg.routes[ability]
    if get_path(record, cfg.reference_field) is not None or get_path(record, cfg.check_field) is not None:
        return "golden"
    if ability in cfg.pairwise_abilities:
        return "pairwise"
    return "absolute"


def lang_of(record: dict, cfg: AutoRateConfig) -> str:
    if cfg.lang != "auto":
        return cfg.lang
    language = get_path(record, cfg.language_field)
    return "zh" if isinstance(language, str) and language.lower().startswith("zh") else "en"


def rule_score(record: dict, response: str, cfg: AutoRateConfig) -> float | None:
    """The rule checker's score of ``response`` where one applies (a check spec; a Math reference through
    math-verify), else ``None`` (the golden judge decides)."""
    if not cfg.rules:
        return None
    spec = get_path(record, cfg.check_field)
    if isinstance(spec, dict):
        from novalign.world.checkers import score

        return float(score(response, spec))
    reference = get_path(record, cfg.reference_field)
    if reference is not None and get_path(record, cfg.ability_field) in cfg.math_abilities:
        from novalign.eval.math import answers_equivalent, extract_answer

        return float(answers_equivalent(extract_answer(response), str(reference)))
    return None


# ------------------------------------------------------------------------------------- one group's plan


def plan_group(record: dict, cfg: AutoRateConfig, prompt_text: str) -> tuple[Rater, list[tuple[Any, str, Any]], dict]:
    """What rating ``record`` takes: its rater, the judge prompts to ask as ``(key, rendered prompt, parser)``
    (key: a response index, or an ``(i, j)`` pair), and the scores rule checkers already gave (index -> score)."""
    from novalign.eval.judge import load_template, render

    rater = rater_for(record, cfg)
    lang = lang_of(record, cfg)
    texts = [r["content"] for r in record["responses"]]
    asks: list[tuple[Any, str, Any]] = []
    ruled: dict[int, float] = {}
    if rater == "pairwise":
        template = load_template("autorator_pairwise", lang, cfg.template_dir)
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                asks.append(((i, j), render(template, prompt=prompt_text, response_a=texts[i], response_b=texts[j]),
                             parse_same))
        return rater, asks, ruled
    if rater == "golden":
        reference = get_path(record, cfg.reference_field)
        for i, t in enumerate(texts):
            s = rule_score(record, t, cfg)
            if s is not None:
                ruled[i] = s
        if len(ruled) < len(texts):
            if reference is None:
                raise ValueError("golden rater without a reference answer (reference_field) or a rule checker")
            template = load_template("autorator_golden", lang, cfg.template_dir)
            asks = [(i, render(template, prompt=prompt_text, reference=reference, response=t), rating_to_unit)
                    for i, t in enumerate(texts) if i not in ruled]
        return rater, asks, ruled
    template = load_template("autorator_absolute", lang, cfg.template_dir)
    asks = [(i, render(template, prompt=prompt_text, response=t), rating_to_unit) for i, t in enumerate(texts)]
    return rater, asks, ruled


def assemble_group(record: dict, rater: Rater, verdicts: dict, ruled: dict[int, float]) -> dict:
    """The group with every response's ``score`` (in [0, 1]) and ``rater`` (``rule`` where a checker gave it;
    pairwise adds ``cluster``). ``verdicts``: key -> parsed judgment, every asked key present."""
    n = len(record["responses"])
    responses = [dict(r) for r in record["responses"]]
    if rater == "pairwise":
        labels = clusters(n, verdicts)
        for r, label, s in zip(responses, labels, cluster_scores(labels)):
            r.update(score=s, rater="pairwise", cluster=label)
    else:
        for i, r in enumerate(responses):
            if i in ruled:
                r.update(score=ruled[i], rater="rule")
            else:
                r.update(score=verdicts[i], rater=rater)
    return {**record, "responses": responses, "rater": rater}
