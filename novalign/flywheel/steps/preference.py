"""``pref_groups``: the scored samples of each prompt become one preference group (report section 3.3), through
:func:`novalign.flywheel.prefs.build_groups` -- ROUGE-L near-duplicates and empty responses out, groups whose
kept responses all score alike out. Scores are mapped from the judge's scale ``[low, high]`` onto ``[0, 1]``
(``(s - low) / (high - low)``), the range the reward model's MSE term expects.

Each input record is one sample; the first sample of a kept group carries the group (``{prompt, responses:
[{content, score}], <group_key>}``, id ``<first sample id>/group``), the other kept samples are merged into it
(counted as ``merged``, not as drops); every other sample is dropped with its reason.
"""

from __future__ import annotations

from collections.abc import Callable

from novalign.config.pipeline import PrefGroupsConfig
from novalign.flywheel.step import TEXT, Outcome, Step, dumps_key, register

__all__ = ["PrefGroups"]


@register
class PrefGroups(Step):
    type = "pref_groups"
    Config = PrefGroupsConfig
    mode = "global"

    def input_fields(self):
        c = self.config
        return {c.prompt_field: TEXT, c.response_field: (str,)}

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        from novalign.flywheel.prefs import build_groups

        c = self.config
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_prompt.setdefault(dumps_key(r[c.prompt_field]), []).append(i)
        outcomes: list[Outcome | None] = [None] * len(records)
        for members in by_prompt.values():
            scored = [i for i in members if isinstance(records[i].get(c.score_field), (int, float))]
            for i in set(members) - set(scored):
                outcomes[i] = _drop(records[i], "no score")
            if not scored:
                continue
            first = records[scored[0]]
            value = first[c.prompt_field]
            prompt = {"messages": [{"role": "user", "content": value}] if isinstance(value, str) else value,
                      **({c.group_key: first[c.group_key]} if c.group_key in first else {})}
            texts = [records[i][c.response_field] for i in scored]
            scores = [(records[i][c.score_field] - c.low) / (c.high - c.low) for i in scored]
            groups, _ = build_groups([prompt], [texts], [scores], rouge_threshold=c.rouge_threshold,
                                     group_key=c.group_key)
            if not groups:
                for i in scored:
                    outcomes[i] = _drop(records[i], "no score difference in its group")
                continue
            kept = {resp["content"] for resp in groups[0]["responses"]}
            carrier = next(i for i in scored if records[i][c.response_field] in kept)
            for i in scored:
                text = records[i][c.response_field]
                if i == carrier:
                    group = {"_id": f"{records[i]['_id']}/group", **groups[0]}
                    outcomes[i] = {"_id": records[i]["_id"], "out": [group], "drop": None, "detail": None}
                elif text in kept and text not in (records[j][c.response_field] for j in scored if j < i):
                    outcomes[i] = {"_id": records[i]["_id"], "out": [], "drop": None,
                                   "detail": {"merged_into": f"{records[carrier]['_id']}/group"}}
                else:
                    outcomes[i] = _drop(records[i], "empty response" if not text.strip() else "near-duplicate response")
        return outcomes  # type: ignore[return-value]


def _drop(record: dict, reason: str) -> Outcome:
    return {"_id": record["_id"], "out": [], "drop": reason, "detail": None}
