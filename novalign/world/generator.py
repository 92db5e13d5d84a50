"""The seeded demo world: tasks for six capabilities, a plain-text pretraining corpus, and the splits.

``build_world(cfg)`` returns, for one :class:`~novalign.config.WorldConfig` (same seed -> same world):

* ``corpus`` -- pretraining documents in plain text (facts of the knowledge base, worked examples of Math,
  Reason and Code, prose about the IF topics). No chat markers, and no instruction-following or system-role
  examples: those are what alignment has to teach.
* ``sft`` -- training tasks with gold responses, per capability (IF prompts are seed prompts expanded with
  constraints); ``rl`` -- further prompts for preference sampling and RL; ``eval`` -- held-out prompts.
  No eval prompt occurs in ``sft``, ``rl`` or the corpus's worked examples. KQA evaluation asks about
  countries that SFT never asks about: their facts, and web-FAQ lines with those very questions, are only
  in the corpus -- so KQA measures whether alignment keeps and exposes what pretraining stored.

How the *base* model is evaluated: plain-text few-shot prompts (:func:`few_shot_prompt`), the format a
base model saw in pretraining -- ``Question: ... / Answer: ...`` blocks, ``System: ...`` for a system
prompt -- with ``few_shot`` solved examples of the same capability first. Chat models get the chat
template. Both are graded by the same checkers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from novalign.data.io import write_json_atomic, write_jsonl
from novalign.world.implicit import ABSTAIN, make_implicit
from novalign.world.kb import QUESTIONS, build_kb, fact_sentences
from novalign.world.tasks import (
    CAPABILITIES,
    ARG_NAMES,
    CODE_FUNCTIONS,
    DAYS,
    TOPICS,
    Task,
    make_code,
    make_if,
    make_kqa,
    make_math,
    make_reason,
    make_role,
    code_example,
)

__all__ = ["build_world", "prompt_pool", "write_world", "task_key", "render_plain", "few_shot_prompt", "STOP_STRINGS", "chat_record"]

STOP_STRINGS = ("\n\n", "\nQuestion:", "\nSystem:")
"""Where a base model's plain-text answer ends."""


def task_key(task: Task) -> str:
    """Identity of a prompt: its messages (the gold response is not part of it)."""
    return json.dumps(task["messages"], sort_keys=True)


def render_plain(messages: list[dict], response: str | None = None) -> str:
    """A conversation as plain text: ``System:`` / ``Question:`` / ``Answer:`` lines; ends with ``Answer:``
    (and `` response`` when given)."""
    labels = {"system": "System:", "user": "Question:", "assistant": "Answer:"}
    lines = [f"{labels[m['role']]} {m['content']}" for m in messages]
    lines.append("Answer:" + (f" {response}" if response is not None else ""))
    return "\n".join(lines)


def few_shot_prompt(task: Task, shots: list[Task]) -> str:
    """The plain-text prompt a base model is evaluated with: solved ``shots``, then ``task`` unanswered."""
    blocks = [render_plain(s["messages"], s["response"]) for s in shots]
    return "\n\n".join(blocks + [render_plain(task["messages"])])


def chat_record(task: Task) -> dict[str, Any]:
    """An SFT chat record: the messages with the gold response as the last assistant turn."""
    return {"messages": task["messages"] + [{"role": "assistant", "content": task["response"]}],
            "capability": task["capability"]}


def _makers(kb_train, kb_eval, kb_all) -> dict[str, tuple[Callable, Callable]]:
    """capability -> (maker for training splits, maker for the eval split)."""
    plain = {"math": make_math, "reason": make_reason, "if": make_if, "code": make_code}
    makers = {cap: (fn, fn) for cap, fn in plain.items()}
    makers["role"] = (lambda r: make_role(r, kb_all), lambda r: make_role(r, kb_all))
    makers["kqa"] = (lambda r: make_kqa(r, kb_train), lambda r: make_kqa(r, kb_eval))
    return makers


def _draw(maker: Callable, rng: random.Random, count: int, exclude: set[str], what: str, unique: bool = False) -> list[Task]:
    """``count`` tasks whose prompts are not in ``exclude``; with ``unique`` also distinct from each other
    (they join ``exclude``). A clear error if the capability's prompt space is too small for the sizes asked."""
    out: list[Task] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 200 * (count + 10):
            raise ValueError(f"world: could only draw {len(out)} distinct {what} prompts of {count} asked; "
                             "lower the world sizes")
        task = maker(rng)
        key = task_key(task)
        if key in exclude:
            continue
        if unique:
            exclude.add(key)
        out.append(task)
    return out


def _corpus(cfg, kb, eval_keys: set[str], rng: random.Random) -> list[str]:
    """Plain-text pretraining documents (see the module docstring)."""
    docs: list[str] = []
    for _ in range(cfg.corpus_fact_repeats):
        for c in kb:
            facts = fact_sentences(c)
            rng.shuffle(facts)
            faq = [f"Question: {q.format(name=c.name)}\nAnswer: The answer is {getattr(c, a)}." for q, a in QUESTIONS]
            rng.shuffle(faq)
            docs.append(" ".join(facts[:4]) + "\n\n" + "\n\n".join(faq[:2]) + "\n\n" + " ".join(facts[4:]))
    for i in range(7):
        docs.append("The days of the week are " + ", ".join(DAYS[i:] + DAYS[:i]) + ". " +
                    " ".join(f"After {DAYS[(i + k) % 7]} comes {DAYS[(i + k + 1) % 7]}." for k in range(7)))
    for name, kind, desc, body, _tests in CODE_FUNCTIONS:
        for args in ARG_NAMES[kind]:
            for k in range(2, 21, 3):
                text, source = code_example(name, args, desc, body, k)
                docs.append(f"# {name}({', '.join(args)}) {text}.\n{source}")
    for topic, sentences in TOPICS.items():
        for _ in range(4):
            shuffled = list(sentences)
            rng.shuffle(shuffled)
            docs.append(f"About {topic}. " + " ".join(shuffled))
    worked = {"math": make_math, "reason": make_reason, "code": make_code}
    for cap, maker in worked.items():
        examples = _draw(maker, rng, cfg.corpus_worked_examples, eval_keys, f"corpus {cap}")
        for start in range(0, len(examples), 4):
            docs.append("\n\n".join(render_plain(t["messages"], t["response"]) for t in examples[start : start + 4]))
    rng.shuffle(docs)
    return docs


def build_world(cfg) -> dict[str, Any]:
    """The whole world for ``cfg`` (a :class:`~novalign.config.WorldConfig`), deterministic in ``cfg.seed``.

    Returns ``{"kb", "corpus", "sft", "rl", "eval", "shots", "pas"}``; ``sft``, ``rl``, ``eval`` and ``shots`` map
    each capability to its tasks (``shots``: the solved few-shot examples for plain-text base evaluation, drawn
    from the training tasks). ``eval`` and ``shots`` also hold ``implicit`` (:mod:`novalign.world.implicit`);
    ``pas`` is PAS's training data, ``{prompt, complement, capability}``: implicit prompts with the explicit
    instruction, and prompts of every capability with the abstain complement. ``grpo`` maps each capability
    to ``grpo_per_capability`` fresh RL prompts (may repeat SFT prompts, never eval ones; empty when 0).
    """
    kb = build_kb(cfg.num_countries, cfg.seed)
    makers = _kb_makers(cfg, kb)
    rng = random.Random(f"world-{cfg.seed}")
    used: set[str] = set()
    splits: dict[str, dict[str, list[Task]]] = {"eval": {}, "sft": {}, "rl": {}}
    for cap in CAPABILITIES:  # eval first, so training splits avoid its prompts
        splits["eval"][cap] = _draw(makers[cap][1], rng, cfg.eval_per_capability, used, f"eval {cap}", unique=True)
    for cap in CAPABILITIES:
        splits["sft"][cap] = _draw(makers[cap][0], rng, cfg.sft_per_capability, used, f"sft {cap}")
        splits["rl"][cap] = _draw(makers[cap][0], rng, cfg.rl_per_capability, used, f"rl {cap}")
    shots = {cap: splits["sft"][cap][: cfg.few_shot] for cap in CAPABILITIES}
    # implicit requirements (PAS): a stream of their own, so adding them left every other split as it was
    irng = random.Random(f"world-{cfg.seed}-implicit")
    splits["eval"]["implicit"] = _draw(make_implicit, irng, cfg.eval_per_capability, used, "eval implicit", unique=True)
    implicit = _draw(make_implicit, irng, cfg.pas_prompts, used, "PAS implicit")
    shots["implicit"] = implicit[: cfg.few_shot]
    pas = [{"prompt": t["messages"][-1]["content"], "complement": t["complement"], "capability": "implicit"}
           for t in implicit]
    for cap in CAPABILITIES:  # explicit or requirement-free prompts: PAS learns to add nothing
        pas += [{"prompt": t["messages"][-1]["content"], "complement": ABSTAIN, "capability": cap}
                for t in splits["sft"][cap][: cfg.pas_abstain_per_capability]]
    irng.shuffle(pas)
    corpus = _corpus(cfg, kb, used, rng)
    world = {"kb": kb, "corpus": corpus, **splits, "shots": shots, "pas": pas, "grpo": {}}
    if cfg.grpo_per_capability:  # fresh RL prompts, from their own stream too
        world["grpo"] = prompt_pool(cfg, world, cfg.grpo_per_capability, random.Random(f"world-{cfg.seed}-grpo"))
    return world


def _kb_makers(cfg, kb) -> dict[str, tuple[Callable, Callable]]:
    """The task makers of :func:`_makers`, KQA's countries split by ``cfg.kqa_train_fraction``."""
    cut = max(1, int(len(kb) * cfg.kqa_train_fraction))
    if cut >= len(kb):
        raise ValueError("world.kqa_train_fraction leaves no country for KQA evaluation")
    return _makers(kb[:cut], kb[cut:], kb)


def prompt_pool(cfg, world: dict[str, Any], per_capability: int, rng: random.Random,
                capabilities=CAPABILITIES) -> dict[str, list[Task]]:
    """``per_capability`` prompts of each capability drawn from its training distribution with ``rng`` (they may
    repeat SFT prompts), none of them an eval prompt of ``world``: the world's GRPO pool, and the seeded pools
    of ``bench/rl_world.py``."""
    makers = _kb_makers(cfg, world["kb"])
    held_out = {task_key(t) for tasks in world["eval"].values() for t in tasks}
    return {cap: _draw(makers[cap][0], rng, per_capability, set(held_out), f"pool {cap}") for cap in capabilities}


def write_world(world: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the world's files into ``out``; returns {name: path}.

    ``corpus.jsonl`` ({text}); ``sft_<cap>.jsonl`` and ``sft.jsonl`` (chat records); ``rl_prompts.jsonl``
    ({messages, capability, check}); ``eval.jsonl`` ({messages, response, capability, check});
    ``shots.jsonl``; ``pas.jsonl`` ({prompt, complement, capability}); ``grpo_prompts.jsonl`` (like
    ``rl_prompts.jsonl``, when ``grpo_per_capability`` > 0); ``kb.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def put(name: str, rows: list[dict]) -> None:
        write_jsonl(out / name, rows)
        files[name.removesuffix(".jsonl")] = str(out / name)

    put("corpus.jsonl", [{"text": d} for d in world["corpus"]])
    for cap in CAPABILITIES:
        put(f"sft_{cap}.jsonl", [chat_record(t) for t in world["sft"][cap]])
    put("sft.jsonl", [chat_record(t) for cap in CAPABILITIES for t in world["sft"][cap]])

    def prompts(split: dict[str, list[Task]]) -> list[dict]:
        return [{"messages": t["messages"], "capability": t["capability"], "check": t["check"]}
                for cap in CAPABILITIES for t in split.get(cap, [])]

    put("rl_prompts.jsonl", prompts(world["rl"]))
    if world.get("grpo"):
        put("grpo_prompts.jsonl", prompts(world["grpo"]))
    put("eval.jsonl", [t for cap in world["eval"] for t in world["eval"][cap]])
    put("shots.jsonl", [t for cap in world["shots"] for t in world["shots"][cap]])
    put("pas.jsonl", world.get("pas", []))
    write_json_atomic(out / "kb.json", [c.__dict__ for c in world["kb"]], indent=1)
    files["kb"] = str(out / "kb.json")
    return files
