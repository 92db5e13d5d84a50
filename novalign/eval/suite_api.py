"""The contract between ``novalign eval`` (the runner) and one evaluation suite.

A suite is a plain function ``run(ctx: SuiteContext) -> dict``. The runner builds the context for one
model and one suite entry of the config; the suite reads its data, asks the model (``ctx.respond``) and,
when it judges, the judge (``ctx.judge``), writes one record per sample through ``ctx.write`` and returns
its summary. Suites never open output files themselves, so resume, layout and reports stay in the runner.

Records (one per sample, JSON-serializable) always carry:
    ``id``        a stable sample id (the data's own id/key where it has one), unique within the suite;
    ``category``  the group the sample is reported under (instruction type, task type, capability, ...);
    ``failed``    true when a judgment could not be made (it is counted, never guessed);
and, where a judge was asked, ``judge_raw``: every raw judge reply for that sample, in order.

The summary a suite returns::

    {"metrics": {"<metric>": float, ...},                       # overall, fractions in [0, 1] or scores
     "by_category": {"<category>": {"<metric>": float, ...}},   # per-category bars in the report
     "num_samples": int, "num_failed": int,
     "decimals": {"<metric>": int},                             # optional: places the report prints
     ...}                                                       # suites may add more keys

A suite whose benchmark publishes rounded numbers stores them rounded as the official code does, with the
exact value beside under ``<metric>_unrounded``, and says in ``decimals`` how the official table prints them.

Asking the model. ``ctx.respond(conversations)`` answers chats through the model's chat template;
``ctx.complete(prompts, stop=[...])`` continues raw text with no template -- how a base model is evaluated on
few-shot text (lm-eval-harness's generation tasks; ``ChatRequest.prompt`` in the LLM layer). Both accept
keywords ``stop``, ``max_tokens`` (overriding the model's) and ``together``: ``together=True`` asks the batch
as one batch of the model (a local model: one ``generate_batch``, rows in the given order), so greedy replies
do not depend on timing; the suite then sizes and orders its batches itself. Where the runner can count
prompt tokens (local models), ``ctx.prompt_tokens(items)`` gives each conversation's or raw prompt's length,
for suites that batch by length; it returns ``None`` where the backend cannot tell.

Resume: ``ctx.done`` holds the records an earlier, interrupted run already wrote (by ``id``). A suite skips
those samples and computes its metrics over ``done`` records plus the new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Conversation = list[dict[str, str]]  # OpenAI-style messages: [{"role": ..., "content": ...}, ...]
Responder = Callable[..., list[str]]  # respond(conversations, *, stop=, max_tokens=, together=) -> one reply each
Completer = Callable[..., list[str]]  # complete(prompts: list[str], *, stop=, max_tokens=, together=) -> one each


@dataclass
class SuiteContext:
    name: str  # the suite entry's name in the config (the output file is <model>/<name>.jsonl)
    data: Path | None  # the suite's input file (None for suites that need none)
    respond: Responder | None  # the model under test; None in score-only mode (responses/judgments given)
    judge: Any | None  # a novalign.llm.LLMClient, or None when the config names no judge
    write: Callable[[dict], None]  # append one per-sample record; durable when it returns
    done: dict[str, dict] = field(default_factory=dict)  # records from an interrupted earlier run, by id
    options: dict[str, Any] = field(default_factory=dict)  # the suite's own options from the config
    peers: dict[str, Responder] = field(default_factory=dict)  # other models in the config (GSB / pairwise)
    model_name: str = ""  # the model under test, as named in the config
    lang: str = "en"  # judge template language: "en" or "zh"
    template_dir: Path | None = None  # a folder of user-edited judge templates that override the bundled ones
    progress: bool = True
    complete: Completer | None = None  # raw text continuation (base models); None where the model has no such mode
    prompt_tokens: Callable[[list[Conversation | str]], list[int] | None] | None = None  # prompt lengths (see above)


class Suite(Protocol):
    def __call__(self, ctx: SuiteContext) -> dict: ...
