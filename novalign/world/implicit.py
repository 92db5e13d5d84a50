"""Implicit requirements: the demo world's task for PAS (report section 4.6).

A user often leaves a requirement unsaid but implied: "it goes on a poster printed in block capitals" means
the reply must be in capital letters. An *implicit* task is an IF seed prompt plus such a cue sentence; its
check is the IFEval verifier of the requirement the cue implies. The SFT data never contains a cue, so the
aligned model has to be told -- which is PAS's job: a small model, trained on (prompt -> complement) pairs,
writes the explicit instruction ("Your entire reply must be in capital letters.") that is then joined to the
prompt before the main model sees it, without retraining the main model.

For every other prompt PAS is trained to abstain (complement :data:`ABSTAIN`), so that it is plug-and-play in
front of a model on all traffic: a prompt whose requirements are already explicit (or absent) goes through
unchanged.

The cue sentences are shared by training and evaluation; evaluation prompts are distinct prompts (another
seed/topic/cue combination), so PAS is measured on held-out prompts, not on unseen phrasings.
"""

from __future__ import annotations

import random

from novalign.world.tasks import CONSTRAINTS, SEEDS, TOPICS, Task, _if_response, _task, _user

__all__ = ["ABSTAIN", "CUES", "make_implicit"]

ABSTAIN = "None."
"""The complement PAS is trained to give when nothing needs adding (the prompt then goes through unchanged)."""

# constraint (a key of tasks.CONSTRAINTS) -> sentences that imply it without stating it
CUES: dict[str, list[str]] = {
    "capital": ["It goes on a poster printed in block capitals.", "My old display can only show capital letters."],
    "lower": ["It is for a chat where everyone writes in small letters only.",
              "My pager cannot show capital letters."],
    "json": ["A program will read your reply as a JSON object.", "My app parses the reply as JSON."],
    "quote": ["I will paste your whole reply into a quote box, marks and all.",
              "I will cite the whole reply word for word as a quotation."],
    "title": ["It is for my blog, where every post needs a title.", "My editor wants a headline on top."],
    "end": ["Sign off the way our help desk always does.", "Close with our usual help-desk line."],
}


def make_implicit(rng: random.Random) -> Task:
    """A seed prompt plus a cue sentence; the check is the implied constraint's IFEval verifier. The task also
    carries ``complement``: the explicit instruction PAS should add (the constraint's own wording)."""
    from novalign.world.checkers import passes

    for _ in range(50):
        topic, name = rng.choice(sorted(TOPICS)), rng.choice(sorted(CUES))
        text, iid, kwargs = CONSTRAINTS[name]
        prompt = rng.choice(SEEDS).format(t=topic) + " " + rng.choice(CUES[name])
        task = _task("implicit", _user(prompt), _if_response(topic, [name], 0, ""),
                     {"type": "ifeval", "instruction_id_list": [iid], "kwargs": [dict(kwargs)]})
        if passes(task["response"], task["check"]):  # see make_if: langdetect misjudges a few short replies
            task["complement"] = text
            return task
    raise RuntimeError("could not draw an implicit task whose gold reply passes its own check")
