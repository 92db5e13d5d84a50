"""BIG-Bench Hard (Suzgun et al. 2022, arXiv:2210.09261) in the files of ``suzgunmirac/BIG-Bench-Hard``.

- ``bbh/<task>.json``: ``{"canary": ..., "examples": [{"input", "target"}]}``;
- ``cot-prompts/<task>.txt``: a canary line, a line ``-----``, then the task description and three
  chain-of-thought exemplars, each ``Q: ...\\nA: Let's think step by step.\\n... So the answer is X.``

Prompts are built exactly as the published ``code-davinci-002-outputs`` inputs are: chain of thought
``exemplars + "\\n\\nQ: " + input + "\\nA: Let's think step by step."``; answer only (direct) the same
exemplars with each reasoning replaced by its answer (``A: X``) and the question ending ``"\\nA:"``. The answer
of a chain-of-thought reply is the text after its first ``So the answer is`` (a final period dropped), of a
direct reply the reply itself, stripped; a sample is right on exact match with ``target``. With these rules
the published code-davinci-002 predictions give the published accuracy of every task, in both modes.
The score is accuracy per task (exact match), and their unweighted mean over tasks, as the paper averages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval.suite_api import SuiteContext

__all__ = ["bbh_prompt", "direct_exemplars", "extract_bbh_answer", "read_bbh_task", "read_cot_prompt", "run_bbh"]

_ANSWER = re.compile(r"So the answer is (.*)")
_COT_ANSWER = re.compile(r"A: Let's think step by step\.[ \n].*?So the answer is (.*?)\.?\n?(?=\n\nQ: |\Z)", re.DOTALL)


def read_bbh_task(path: str | Path) -> list[dict[str, str]]:
    """The examples of ``bbh/<task>.json`` as ``[{input, target}]``.

    Raises:
        DataError: naming the file and the field (``examples[3].target``) when the shape is wrong.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, getattr(exc, "lineno", None), None, f"not a BBH task JSON file: {exc}") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise DataError(path, None, "examples", "expected a non-empty list of {input, target}")
    for i, ex in enumerate(examples):
        for name in ("input", "target"):
            if not isinstance(ex, dict) or not isinstance(ex.get(name), str):
                raise DataError(path, None, f"examples[{i}].{name}", "missing or not a string")
    return [{"input": ex["input"], "target": ex["target"]} for ex in examples]


def read_cot_prompt(path: str | Path) -> str:
    """The exemplars of ``cot-prompts/<task>.txt``: everything after the ``-----`` line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    head, sep, body = text.partition("-----\n")
    if not sep or not body.strip():
        raise DataError(path, None, None, "expected a canary line, a '-----' line, then the exemplars")
    return body


def direct_exemplars(cot: str) -> str:
    """The answer-only exemplars: each ``A: Let's think step by step. ... So the answer is X.`` becomes ``A: X``."""
    return _COT_ANSWER.sub(lambda m: f"A: {m.group(1)}", cot)


def bbh_prompt(exemplars: str, question: str, mode: str = "cot") -> str:
    """The few-shot prompt of one question, as in the published outputs (see the module docstring)."""
    if mode == "cot":
        return exemplars + "\n\nQ: " + question + "\nA: Let's think step by step."
    if mode == "direct":
        return direct_exemplars(exemplars) + "\n\nQ: " + question + "\nA:"
    raise ValueError(f"BBH mode must be 'cot' or 'direct', got {mode!r}")


def extract_bbh_answer(reply: str, mode: str = "cot") -> str:
    """``So the answer is (A).`` -> ``(A)`` (chain of thought; a reply without the phrase is taken whole);
    a direct reply stripped."""
    if mode == "cot":
        match = _ANSWER.search(reply)
        if match:
            answer = match.group(1).strip()
            return answer[:-1] if answer.endswith(".") else answer
    return reply.strip()


def _tasks(root: Path, only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in (root / "bbh").glob("*.json"))
    if not names:
        raise FileNotFoundError(f"no bbh/<task>.json under {root}")
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown BBH tasks {unknown}; the folder has {names}")
        names = [n for n in names if n in only]
    return names


def run_bbh(ctx: SuiteContext) -> dict[str, Any]:
    """BBH: ``data`` is a BIG-Bench-Hard checkout (its ``bbh/`` and ``cot-prompts/`` folders); options ``mode``
    (``cot``, default, or ``direct``) and ``tasks`` (a subset). Metrics: ``accuracy`` (the mean of the
    per-task accuracies) and ``accuracy_micro`` (over all examples); per task in ``by_category``."""
    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r}: needs data (a BIG-Bench-Hard folder with bbh/ and cot-prompts/)")
    mode = ctx.options.get("mode", "cot")
    root = Path(ctx.data)
    records: dict[str, dict] = {}
    order: list[str] = []
    for task in _tasks(root, ctx.options.get("tasks")):
        exemplars = read_cot_prompt(root / "cot-prompts" / f"{task}.txt")
        pending = []
        for i, ex in enumerate(read_bbh_task(root / "bbh" / f"{task}.json")):
            key = f"{task}/{i}"
            order.append(key)
            if key in ctx.done:
                records[key] = ctx.done[key]
            else:
                pending.append((key, ex))
        if pending:
            if ctx.respond is None:
                raise ValueError(f"suite {ctx.name!r}: no model to ask")
            prompts = [bbh_prompt(exemplars, ex["input"], mode) for _, ex in pending]
            for (key, ex), reply in zip(pending, ctx.respond([[{"role": "user", "content": p}] for p in prompts]),
                                        strict=True):
                answer = extract_bbh_answer(reply, mode)
                records[key] = {"id": key, "category": task, "failed": False, "response": reply, "answer": answer,
                                "target": ex["target"], "correct": answer == ex["target"]}
                ctx.write(records[key])
    by_task: dict[str, list[bool]] = {}
    for key in order:
        by_task.setdefault(records[key]["category"], []).append(bool(records[key]["correct"]))
    per_task = {t: sum(v) / len(v) for t, v in by_task.items()}
    return {"metrics": {"accuracy": sum(per_task.values()) / len(per_task),
                        "accuracy_micro": sum(sum(v) for v in by_task.values()) / len(order)},
            "by_category": {t: {"accuracy": a} for t, a in per_task.items()}, "num_samples": len(order),
            "num_failed": 0, "mode": mode}
