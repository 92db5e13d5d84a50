"""Synthetic preference data for the demo, the recipes and the tests (``novalign/assets/demo_pref*.jsonl``).

The prompts and correct answers are those of :mod:`novalign.data.demo`. Every answer comes in three
versions, and the hidden rule a reward model has to find is their order:

* ``polite`` -- the answer plus a friendly closing ("Hope this helps!"): best (quality 2);
* ``plain``  -- the answer alone (quality 1);
* ``rude``   -- a dismissive opener ("Ugh, fine.") before the answer: worst (quality 0).

Annotated absolute scores follow the quality with noise, on three dimensions as in the report (section
3.3): ``helpfulness`` 1-10, ``fluency`` 1-5, ``safety`` 1-5, each from one of four annotators. About a
third of the pair records carry no scores, like the open pairwise sets the report mixes in. Regenerate the
bundled files with::

    python -m novalign.data.demo_preference
"""

from __future__ import annotations

import random
from typing import Any

from novalign.data.demo import ASSETS_DIR, make_demo_conversations
from novalign.data.io import write_jsonl

__all__ = ["QUALITY", "SCORE_DIMENSIONS", "make_preference_records", "response_versions"]

POLITE_CLOSINGS = ("Hope this helps!", "Happy to help.", "Let me know if you need anything else.", "Glad I could help!")
RUDE_OPENERS = ("Ugh, fine.", "Whatever.", "Not that you deserve it:", "Figure it out yourself next time.")
QUALITY = {"polite": 2, "plain": 1, "rude": 0}
SCORE_DIMENSIONS = {"helpfulness": (1, 10), "fluency": (1, 5), "safety": (1, 5)}
ANNOTATORS = ("ann-a", "ann-b", "ann-c", "ann-d")


def response_versions(answer: str, rng: random.Random) -> dict[str, str]:
    """The three versions of one answer."""
    return {
        "polite": f"{answer} {rng.choice(POLITE_CLOSINGS)}",
        "plain": answer,
        "rude": f"{rng.choice(RUDE_OPENERS)} {answer}",
    }


def _scores(quality: int, rng: random.Random, annotator_bias: float) -> dict[str, int]:
    def clip(v: float, lo: int, hi: int) -> int:
        return int(min(hi, max(lo, round(v))))

    return {
        "helpfulness": clip(3 + 2.5 * quality + annotator_bias + rng.gauss(0, 0.8), 1, 10),
        "fluency": clip(3 + 0.8 * quality + rng.gauss(0, 0.5), 1, 5),
        "safety": clip(5 - 1.8 * (quality == 0) + rng.gauss(0, 0.4), 1, 5),
    }


def make_preference_records(n: int, seed: int, *, form: str = "pairs", scored_fraction: float = 0.65) -> list[dict[str, Any]]:
    """``n`` preference records over single-turn demo prompts, deterministic in ``seed``.

    Args:
        form: ``"pairs"`` (prompt messages, chosen/rejected assistant messages, scores on
            ``scored_fraction`` of them) or ``"groups"`` (all three versions with ranks and scores).
    """
    if form not in ("pairs", "groups"):
        raise ValueError(f"form must be 'pairs' or 'groups', got {form!r}")
    rng = random.Random(seed)
    bias = {a: rng.uniform(-1.0, 1.0) for a in ANNOTATORS}  # annotators use the scale differently
    records: list[dict[str, Any]] = []
    pool = [c for c in make_demo_conversations(3 * n + 10, seed) if len(c["messages"]) <= 3]
    for conv in pool[:n]:
        prompt, answer = conv["messages"][:-1], conv["messages"][-1]["content"]
        versions = response_versions(answer, rng)
        annotator = rng.choice(ANNOTATORS)
        if form == "groups":
            responses = [
                {"content": text, "rank": 3 - QUALITY[name], "score": _scores(QUALITY[name], rng, bias[annotator])}
                for name, text in versions.items()
            ]
            rng.shuffle(responses)
            records.append({"prompt": prompt, "responses": responses, "annotator": annotator})
            continue
        good, bad = sorted(rng.sample(list(versions), 2), key=lambda v: -QUALITY[v])
        record: dict[str, Any] = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": versions[good]}],
            "rejected": [{"role": "assistant", "content": versions[bad]}],
        }
        if rng.random() < scored_fraction:
            record["chosen_score"] = _scores(QUALITY[good], rng, bias[annotator])
            record["rejected_score"] = _scores(QUALITY[bad], rng, bias[annotator])
            record["annotator"] = annotator
        records.append(record)
    return records


def _regenerate() -> None:
    write_jsonl(ASSETS_DIR / "demo_pref.jsonl", make_preference_records(600, seed=10))
    write_jsonl(ASSETS_DIR / "demo_pref_eval.jsonl", make_preference_records(120, seed=11))
    print(f"wrote demo_pref.jsonl and demo_pref_eval.jsonl under {ASSETS_DIR}")


if __name__ == "__main__":
    _regenerate()
