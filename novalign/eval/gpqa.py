"""GPQA (Rein et al. 2023, arXiv:2311.12022) from its CSV files, as the authors' ``baselines`` code runs it.

``gpqa_main.csv`` / ``gpqa_diamond.csv`` / ``gpqa_extended.csv`` (in the password-protected ``dataset.zip`` of
``idavidrein/gpqa``) have, among others, the columns ``Question``, ``Correct Answer`` and ``Incorrect Answer
1..3``. ``load_examples(path, seed)`` seeds Python's ``random`` once and, row by row, shuffles
``[incorrect 1, incorrect 2, incorrect 3, correct]``; the zero-shot prompt lists them as (A)-(D) and asks
for ``The correct answer is (insert answer here)``. ``parse_sampled_answer`` takes the first match of
``answer is (X)``, ``Answer: (X)``, ``answer: (X)``, ``answer (X)``, then any ``(X)``, X in A-D; no match
counts as wrong. The score is accuracy.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval.suite_api import SuiteContext

__all__ = ["gpqa_prompt", "parse_gpqa_answer", "read_gpqa", "run_gpqa"]

LETTERS = "ABCD"
_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
_PATTERNS = [re.compile(p) for p in (r"answer is \((.)\)", r"Answer: \((.)\)", r"answer: \((.)\)",
                                       r"answer \((.)\)", r"\((.)\)")]


def read_gpqa(path: str | Path, seed: int = 0) -> list[dict[str, Any]]:
    """Questions with shuffled choices: ``{id, question, choices: [4], answer: "A".."D", domain}``.

    The shuffle is the official one: one ``random`` generator seeded with ``seed`` (the baselines' default
    0), one ``shuffle`` per row in file order. Rows are numbered as a spreadsheet shows them (header = 1).

    Raises:
        DataError: naming the file, the row and the column (a missing column, an empty cell).
    """
    path = Path(path)
    rng = random.Random(seed)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, 1, None, f"the header lacks the columns {missing}")
        out = []
        for row_number, row in enumerate(reader, start=2):
            for column in _COLUMNS:
                if not (row.get(column) or "").strip():
                    raise DataError(path, row_number, column, "empty")
            choices = [row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"],
                       row["Correct Answer"]]
            rng.shuffle(choices)
            out.append({"id": str(row.get("Record ID") or row_number), "question": row["Question"], "choices": choices,
                        "answer": LETTERS[choices.index(row["Correct Answer"])],
                        "domain": row.get("High-level domain") or "all"})
    return out


def gpqa_prompt(example: dict[str, Any]) -> str:
    """The baselines' zero-shot prompt."""
    c = example["choices"]
    return (f"What is the correct answer to this question: {example['question']}"
            f"\n\nChoices:\n(A) {c[0]}\n(B) {c[1]}\n(C) {c[2]}\n(D) {c[3]}"
            "\n\nFormat your response as follows: \"The correct answer is (insert answer here)\"")


def parse_gpqa_answer(reply: str) -> str | None:
    """The answer letter, or None. ``"The correct answer is (B)"`` -> ``B``; ``"I pick (C)"`` -> ``C``;
    ``"(E) or (C)"`` -> None (only the first ``(X)`` is read, as there)."""
    for pattern in _PATTERNS:
        for match in pattern.finditer(reply):
            if match.group(1) in LETTERS:
                return match.group(1)
            break  # as the baselines: only the first match of each pattern is looked at
    return None


def run_gpqa(ctx: SuiteContext) -> dict[str, Any]:
    """GPQA zero-shot: ``data`` is a GPQA CSV; ``options.seed`` (0). Metric ``accuracy``; per high-level domain."""
    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r}: needs data (a GPQA csv)")
    examples = read_gpqa(ctx.data, int(ctx.options.get("seed", 0)))
    records = {e["id"]: ctx.done[e["id"]] for e in examples if e["id"] in ctx.done}
    pending = [e for e in examples if e["id"] not in records]
    if pending:
        if ctx.respond is None:
            raise ValueError(f"suite {ctx.name!r}: no model to ask")
        replies = ctx.respond([[{"role": "user", "content": gpqa_prompt(e)}] for e in pending])
        for e, reply in zip(pending, replies, strict=True):
            letter = parse_gpqa_answer(reply)
            records[e["id"]] = {"id": e["id"], "category": e["domain"], "failed": False, "response": reply,
                                "parsed": letter, "answer": e["answer"], "correct": letter == e["answer"]}
            ctx.write(records[e["id"]])
    ordered = [records[e["id"]] for e in examples]
    by_domain: dict[str, list[bool]] = {}
    for r in ordered:
        by_domain.setdefault(r["category"], []).append(bool(r["correct"]))
    return {"metrics": {"accuracy": sum(r["correct"] for r in ordered) / len(ordered)},
            "by_category": {d: {"accuracy": sum(v) / len(v)} for d, v in sorted(by_domain.items())},
            "num_samples": len(ordered), "num_failed": 0}
