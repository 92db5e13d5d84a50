"""The stages of ``novalign run`` and their table, :data:`STAGES`.

Each stage function ``run_<stage>(ctx)`` fills in the paths of its stage config and calls the same entry point
as the stage's own command (``novalign sft``, ``rm``, ``grpo``, ``merge``, ``eval``) or the flywheel's data
steps (:mod:`novalign.flywheel`). A stage reads its data from the recipe's ``data:`` section or, where a field
is unset, from the world stage's files.

Adding a stage is one function here and one :class:`Stage` entry in :data:`STAGES`; ``eval`` picks up every
model :func:`~novalign.recipe.context.stage_models` lists.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from novalign.data.io import write_json_atomic, write_jsonl
from novalign.recipe.context import RecipeContext, base_model_dir, model_stage, stage_key, stage_models

__all__ = ["Stage", "STAGES", "world_verifier", "recipe_reward"]


def _files(given: list[str] | None, ctx: RecipeContext, world_name: str) -> list[str]:
    """The user's files for a source, or the world's file when the source is unset."""
    return list(given) if given is not None else [ctx.world_file(world_name)]


def _records(ctx: RecipeContext, files: list[str]) -> list[dict]:
    return [r for f in files for r in ctx.read(f)]


# ------------------------------------------------------------------------------------- world, pretrain, SFT


def run_world(ctx: RecipeContext) -> None:
    from novalign.world.generator import build_world, write_world

    world = build_world(ctx.cfg.world)
    files = write_world(world, ctx.out)
    counts = {split: {cap: len(tasks) for cap, tasks in world[split].items()} for split in ("sft", "rl", "eval")}
    chars = sum(len(d) for d in world["corpus"])
    write_json_atomic(ctx.out / "world.json", {"files": files, "counts": counts, "corpus_documents": len(world["corpus"]),
                                              "corpus_chars": chars}, indent=1)
    ctx.print(f"world: {len(world['corpus'])} corpus documents ({chars} characters), {counts['sft']} SFT tasks")


def run_pretrain(ctx: RecipeContext) -> None:
    """A tiny model whose tokenizer is trained on the corpus and the SFT chats, pretrained on the corpus."""
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    b, d = ctx.cfg.base, ctx.cfg.data
    text_files = _files(d.text_files, ctx, "corpus")
    corpus = [r["text"] for r in _records(ctx, text_files)]
    chats = [m["content"] for r in _records(ctx, _files(d.sft_files, ctx, "sft")) for m in r.get("messages", [])
             if isinstance(m.get("content"), str)]
    init_tiny_model(ctx.out / "init", arch=b.arch, vocab_size=b.vocab_size, hidden_size=b.hidden_size,
                    num_layers=b.num_layers, num_heads=b.num_heads, num_kv_heads=b.num_kv_heads,
                    intermediate_size=b.intermediate_size, seed=b.seed, texts=corpus + chats)
    cfg = ctx.cfg.pretrain.model_copy(deep=True)
    cfg.output_dir = str(ctx.out)
    cfg.model.path = str(ctx.out / "init")
    cfg.data.train_files, cfg.data.text_files = [], text_files
    run_sft(cfg, console_print=ctx.print)


def _sft(ctx: RecipeContext, cfg, out: Path, model_path: str, train_files: list[str], replay: float) -> None:
    from novalign.train.sft import run_sft

    cfg = cfg.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(out), model_path
    cfg.data.train_files = train_files
    cfg.data.text_files = []
    if replay > 0:  # a seeded sample of the corpus, trained as plain text next to the chat data
        docs = _records(ctx, _files(ctx.cfg.data.text_files, ctx, "corpus"))
        rng = random.Random(f"replay-{cfg.train.seed}")
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "replay.jsonl", rng.sample(docs, max(1, int(len(docs) * replay))))
        cfg.data.text_files = [str(out / "replay.jsonl")]
    run_sft(cfg, console_print=ctx.print)


def run_sft(ctx: RecipeContext) -> None:
    _sft(ctx, ctx.cfg.sft, ctx.out, base_model_dir(ctx), _files(ctx.cfg.data.sft_files, ctx, "sft"),
         ctx.cfg.sft_replay)


# ------------------------------------------------------------------------------------------------- PAS


def run_pas(ctx: RecipeContext) -> None:
    """The PAS model (report section 4.6), fine-tuned from the SFT (or base) model on PAS pairs -- the world's:
    implicit-requirement prompts -> the explicit instruction, other prompts -> the abstain complement -- with
    the same entry point as ``novalign pas train`` (the section 4.6 template around each prompt)."""
    from novalign.pas.train import run_pas_train

    p = ctx.cfg.pas
    cfg = p.train.model_copy(deep=True)
    cfg.output_dir = str(ctx.out / "trainer")  # the model lands in pas/trainer/model
    cfg.pas_files = _files(ctx.cfg.data.pas_files, ctx, "pas")
    cfg.model.path = str(ctx.dir("sft") / "model") if p.init == "sft" else base_model_dir(ctx)
    run_pas_train(cfg, console_print=ctx.print)


def augment_tasks(ctx: RecipeContext, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
    """``tasks`` with each last user message rewritten by the PAS model (greedy, abstain -> unchanged);
    returns (augmented tasks, one ``Augmentation.to_dict()`` per task)."""
    from novalign.pas.augment import PromptAugmenter

    p = ctx.cfg.pas
    augmenter = PromptAugmenter.from_model(str(ctx.dir("pas") / "trainer" / "model"), device="cpu",
                                           join_template=p.join, max_tokens=p.max_tokens, abstain=p.abstain)
    try:
        results = augmenter.augment_many([{"prompt": t["messages"][-1]["content"]} for t in tasks])
    finally:
        augmenter.close()
    out = []
    for task, aug in zip(tasks, results):
        if aug.error is not None:
            raise RuntimeError(f"PAS failed on {aug.prompt!r}: {aug.error}")
        messages = task["messages"][:-1] + [{"role": "user", "content": aug.augmented}]
        out.append(task | {"messages": messages})
    return out, [a.to_dict() for a in results]


# ---------------------------------------------------------------------------------- preferences, RM, GRPO


def world_verifier(response: str, check: dict) -> float:
    """The world's checkers as an RL reward (partial credit for IF and Role)."""
    from novalign.world.checkers import score

    return score(response, check)


def recipe_reward(ctx: RecipeContext, user_prompts: bool):
    """The verifier part of the recipe's reward: the world's checkers for world prompts; for the user's own
    prompts the ``grpo.rewards`` mix (its ``llm_judge`` components judged by the recipe's ``llm`` unless they
    name their own)."""
    from novalign.train.rl.inputs import build_reward
    from novalign.train.rl.rewards import verifier_reward

    if not user_prompts:
        return verifier_reward(world_verifier, name="verifier")
    return build_reward(ctx.cfg.grpo.rewards, device=ctx.cfg.grpo.train.device)


def run_prefs(ctx: RecipeContext) -> None:
    """Preference groups ``{prompt, responses: [{content, score, ...}]}`` for the rm stage. The world's prompts
    go through the preference-data chain (:mod:`novalign.recipe.prefs_chain`; ``prefs.chain: false``: the
    single step below); the user's ``data.prompt_files`` through ``novalign data prefs``
    (:func:`novalign.flywheel.prefs.run_prefs`): n SFT samples per prompt scored by the ``grpo.rewards`` mix,
    filtered and grouped."""
    from novalign.config import PrefsConfig, PrefsDataConfig
    from novalign.flywheel.prefs import run_prefs as build_prefs

    given = ctx.cfg.data.prompt_files
    if given is None and ctx.cfg.prefs.chain:  # the world's prompts through the preference-data chain
        from novalign.recipe.prefs_chain import run_world_chain

        dirs = {"sft": str(ctx.dir("sft") / "model"), "base": base_model_dir(ctx)}
        run_world_chain(ctx.cfg.prefs, ctx.read(ctx.world_file("rl_prompts")), ctx.out, dirs,
                        device=ctx.cfg.grpo.train.device.split(":")[0], console_print=ctx.print)
        return
    plain = ctx.cfg.prefs.model_dump(include=set(PrefsConfig.model_fields))
    cfg = PrefsDataConfig(**plain, prompt_files=given or [], model=str(ctx.dir("sft") / "model"),
                          rewards=ctx.cfg.grpo.rewards, device=ctx.cfg.grpo.train.device, output_dir=str(ctx.out))
    world = given is None
    build_prefs(cfg, prompts=ctx.read(ctx.world_file("rl_prompts")) if world else None,
                scorer=recipe_reward(ctx, user_prompts=False) if world else None, console_print=ctx.print)


def run_rm(ctx: RecipeContext) -> None:
    from novalign.train.rm import run_rm as train_rm

    cfg = ctx.cfg.rm.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(ctx.out), str(ctx.dir("sft") / "model")
    given = ctx.cfg.data.preference_files
    if given is None and not ctx.enabled("prefs"):
        raise ValueError("rm: no preference data; enable the prefs stage or set data.preference_files")
    cfg.data.train_files = list(given) if given is not None else [str(ctx.dir("prefs") / "prefs.jsonl")]
    train_rm(cfg, console_print=ctx.print)


def _mixed_prompts(ctx: RecipeContext) -> list[dict]:
    """The RL prompts whose SFT samples (prefs stage) did not all score the same."""
    if not ctx.enabled("prefs"):
        raise ValueError("rl_prompt_filter 'mixed' needs the prefs stage (it reads the SFT samples' scores)")
    from novalign.flywheel.prefs import mixed_outcomes

    prompts = ctx.read(ctx.world_file("rl_prompts"))
    chosen = [prompts[i] for i in mixed_outcomes(ctx.read(ctx.dir("prefs") / "prompt_scores.jsonl"))]
    if not chosen:
        raise ValueError("rl_prompt_filter 'mixed': no RL prompt had samples with different scores")
    ctx.print(f"grpo: {len(chosen)} of {len(prompts)} RL prompts have mixed SFT outcomes")
    write_jsonl(ctx.out / "mixed_prompts.jsonl", chosen)
    return chosen


def _grpo_prompts(ctx: RecipeContext) -> Path:
    """GRPO's prompts, written to grpo/prompts.jsonl: the user's ``data.rl_prompt_files``, else the world's GRPO
    pool when it has one, else its RL split (with ``rl_prompt_filter: mixed``, only the prompts whose SFT
    samples scored differently); then only the ``rl_capabilities``."""
    from novalign.flywheel.prefs import read_prompts

    pool = ctx.dir("world") / "grpo_prompts.jsonl"
    if ctx.cfg.data.rl_prompt_files is not None:
        prompts = read_prompts(ctx.cfg.data.rl_prompt_files)
    elif pool.is_file():
        if ctx.cfg.rl_prompt_filter == "mixed":
            raise ValueError("rl_prompt_filter 'mixed' reads the prefs stage's scores of the RL split; with a GRPO "
                             "pool (world.grpo_per_capability > 0) use rl_prompt_filter: all")
        prompts = ctx.read(pool)
    elif ctx.cfg.rl_prompt_filter == "mixed":
        prompts = _mixed_prompts(ctx)
    else:
        prompts = ctx.read(ctx.world_file("rl_prompts"))
    caps = ctx.cfg.rl_capabilities
    if caps is not None:
        known = {r.get("capability") for r in prompts}
        if unknown := sorted(set(caps) - known):
            raise ValueError(f"rl_capabilities: unknown {unknown}; the prompts' capabilities are "
                             f"{sorted(c for c in known if c is not None)}")
        prompts = [r for r in prompts if r.get("capability") in caps]
    path = ctx.out / "prompts.jsonl"
    write_jsonl(path, prompts)
    counts: dict[str, int] = {}
    for r in prompts:
        counts[r.get("capability", "all")] = counts.get(r.get("capability", "all"), 0) + 1
    ctx.print(f"grpo: {len(prompts)} prompts {counts}")
    return path


def run_grpo(ctx: RecipeContext) -> None:
    """GRPO from the SFT model; reward = the recipe's verifier (+ the reward model of the rm stage)."""
    from novalign.train.grpo import run_grpo as train_grpo
    from novalign.train.rl.rewards import reward_model_reward, weighted_mix

    cfg = ctx.cfg.grpo.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(ctx.out), str(ctx.dir("sft") / "model")
    cfg.prompt_files = [str(_grpo_prompts(ctx))]
    if cfg.ptx.coef > 0 and not cfg.ptx.train_files:
        cfg.ptx.train_files = _files(ctx.cfg.data.sft_files, ctx, "sft")
    w = ctx.cfg.rl_rewards
    parts = [(recipe_reward(ctx, user_prompts=ctx.cfg.data.rl_prompt_files is not None), w.verifier)]
    if w.reward_model and ctx.enabled("rm"):
        parts.append((reward_model_reward(str(ctx.dir("rm") / "model")), w.reward_model))
    train_grpo(cfg, reward=weighted_mix(parts), console_print=ctx.print)


# ------------------------------------------------------------------------------------------------ merge


def _sft_by_capability(ctx: RecipeContext) -> dict[str, list[dict]]:
    """SFT records per capability: the world's per-capability files, or the user's files by their
    ``capability`` field."""
    from novalign.data.io import iter_records
    from novalign.flywheel.mix import group_by_field

    if ctx.cfg.data.sft_files is None:
        return {p.stem.removeprefix("sft_"): ctx.read(p) for p in sorted(ctx.dir("world").glob("sft_*.jsonl"))}
    return group_by_field([(f, line, r) for f in ctx.cfg.data.sft_files for line, r in iter_records(Path(f))])


def run_merge(ctx: RecipeContext) -> None:
    """Capability specialists continued from the SFT model, then merged by each method (base: the SFT model)."""
    from novalign.config import MergeConfig, MergeModelConfig
    from novalign.flywheel.mix import mix_capabilities
    from novalign.merge import merge_models

    m, sft_model = ctx.cfg.merge, str(ctx.dir("sft") / "model")
    if len(m.specialists) < 2:
        raise ValueError("merge.specialists: give at least two specialists to merge")
    by_capability = _sft_by_capability(ctx)
    paths = []
    for spec in m.specialists:
        out = ctx.out / f"spec_{spec.name}"
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "data.jsonl", mix_capabilities(by_capability, spec.focus, spec.other_fraction,
                                                          seed=f"spec-{spec.name}"))
        if not (out / "model").is_dir():
            _sft(ctx, m.train, out, sft_model, [str(out / "data.jsonl")], 0.0)
        paths.append(str(out / "model"))
    for method in m.methods:
        cfg = MergeConfig(method=method, base_model=sft_model, output_dir=str(ctx.out / method), overwrite=True,
                          models=[MergeModelConfig(path=p) for p in paths], scale=m.scale)
        result = merge_models(cfg)
        ctx.print(f"merge {method}: {result.num_tensors} tensors in {result.seconds:.1f} s")


# ------------------------------------------------------------------------------------------- eval, report


def _model_key(ctx: RecipeContext, label: str) -> str:
    model, pas = label.removesuffix("+pas"), label.endswith("+pas")
    key = ctx.keys.get(model_stage(model), ctx.cfg.base.path or "")
    return key + "+" + ctx.keys["pas"] if pas else key


def _run_eval(ctx: RecipeContext, label: str, path: str, out: Path, suites: list, judge=None):
    """One model of the recipe through ``novalign eval`` (greedy, CPU float32 as the recipe trains), into
    ``out`` -- a folder keyed by the model's stage key, so a retrained model never reuses stored records."""
    from novalign.config import EvalConfig
    from novalign.eval.runner import run_eval

    e = ctx.cfg.eval
    cfg = EvalConfig.model_validate({
        # one engine batch per suite chunk: the engine's cap must not split what the suite batches together
        "models": [{"name": label, "path": path, "max_tokens": e.max_new_tokens,
                    "local": {"device": "cpu", "dtype": "float32", "max_batch_size": e.batch_size}}],
        "judge": judge, "suites": suites, "output_dir": str(out), "batch_size": e.batch_size, "progress": False,
    })
    return run_eval(cfg)[label]


def _world_tasks(ctx: RecipeContext) -> list[dict]:
    """The world's held-out prompts with their index as ``id``, written once per eval run to
    ``eval/tasks.jsonl``, so the replies come back in task order whatever the batches."""
    tasks = [t | {"id": str(i)} for i, t in enumerate(ctx.read(ctx.world_file("eval")))]
    write_jsonl(ctx.out / "tasks.jsonl", tasks)
    return tasks


def _eval_world(ctx: RecipeContext, label: str, path: str, plain: bool, key: str, tasks: list[dict],
                behind_pas: list) -> tuple[dict, str, list[dict]]:
    """The world's held-out prompts (:func:`_world_tasks`) as the ``world`` suite; a ``+pas`` model answers
    the prompts as the PAS model rewrote them (rewritten once for every ``+pas`` row, stored as
    ``eval/pas_eval.jsonl``)."""
    data, complements = ctx.out / "tasks.jsonl", None
    if label.endswith("+pas"):
        if not behind_pas:
            augmented, augmentations = augment_tasks(ctx, tasks)
            write_jsonl(ctx.out / "pas_eval.jsonl", augmented)
            behind_pas.append([a["complement"] for a in augmentations])
        data, complements = ctx.out / "pas_eval.jsonl", behind_pas[0]
    options = {"plain": plain, "shots": ctx.world_file("shots"), "batch_size": ctx.cfg.eval.batch_size}
    out = ctx.out / "suites" / f"{label}-{key}"
    summary = _run_eval(ctx, label, path, out, [{"type": "world", "data": str(data), "options": options}])["world"]
    records = {r["id"]: r for r in ctx.read(out / label / "world.jsonl")}
    rows = [{k: records[t["id"]][k] for k in ("capability", "prompt", "reply", "passed")} for t in tasks]
    if complements is not None:  # what PAS added, next to each reply
        rows = [row | {"complement": c} for row, c in zip(rows, complements, strict=True)]
    return summary["rates"], "plain few-shot" if plain else "chat", rows


def _eval_suites(ctx: RecipeContext, label: str, path: str, key: str) -> tuple[dict, str, list[dict]]:
    """The user's ``data.eval_suites`` through ``novalign eval``; the rates are every suite's metrics."""
    from novalign.config import EvalJudgeConfig

    if label.endswith("+pas"):
        raise ValueError("pas.in_front_of with data.eval_suites: PAS in front of a suite's model is not wired into "
                         "the recipe yet; evaluate through `novalign pas serve` + `novalign eval` instead")
    llm = ctx.cfg.llm
    judge = EvalJudgeConfig.model_validate(llm.model_dump()) if llm is not None else None
    summary = _run_eval(ctx, label, path, ctx.out / "suites" / f"{label}-{key}",
                        [s.model_dump() for s in ctx.cfg.data.eval_suites], judge=judge)
    rates = {f"{suite}.{metric}": value for suite, s in summary.items() for metric, value in s["metrics"].items()
             if isinstance(value, (int, float))}
    return rates, "chat", []


def run_eval(ctx: RecipeContext) -> None:
    """Every stage's model through ``novalign eval`` on the held-out prompts: the world's (the ``world`` suite:
    pass rate per capability) or the user's ``data.eval_suites``. A model's result is cached in
    ``eval/<label>.json`` under its stage key and the eval settings, so only changed models rerun; the
    per-sample records are under ``eval/suites/<label>-<key>/``."""
    import time

    e, world = ctx.cfg.eval, ctx.cfg.data.eval_suites is None
    behind_pas: list = []
    tasks = _world_tasks(ctx) if world else []
    inputs = {"world": ctx.keys["world"]} if world else {"suites": stage_key(
        {"suites": [s.model_dump(mode="json") for s in ctx.cfg.data.eval_suites]}, {})}
    for label, (path, plain) in stage_models(ctx).items():
        key = stage_key({"eval": e.model_dump(), "plain": plain}, {label: _model_key(ctx, label), **inputs})
        out = ctx.out / f"{label}.json"
        if out.is_file() and json.loads(out.read_text()).get("key") == key:
            continue
        t0 = time.time()
        if world:
            rates, fmt, rows = _eval_world(ctx, label, path, plain, key, tasks, behind_pas)
            write_jsonl(ctx.out / f"{label}_replies.jsonl", rows)
        else:
            rates, fmt, rows = _eval_suites(ctx, label, path, key)
        write_json_atomic(out, {"key": key, "model": path, "format": fmt, "rates": rates, "wall_s": time.time() - t0},
                          indent=1)
        ctx.print(f"eval {label}: " + ", ".join(f"{c} {r:.0%}" for c, r in rates.items()))


def run_report(ctx: RecipeContext) -> None:
    from novalign.recipe.report import write_report

    write_report(ctx)


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe: its function, the stages it reads, the config it depends on."""

    name: str
    run: Callable[[RecipeContext], None]
    inputs: tuple[str, ...]  # stages whose outputs this one reads (when they are part of the recipe)
    sections: tuple[str, ...]  # RecipeConfig fields that configure it (always part of its key)
    sources: tuple[str, ...] = ()  # dotted RecipeConfig paths that feed it, part of its key only when set
    user_sources: tuple[str, ...] = ()  # what feeds it only on the user's data: keyed when a data.* source is set
    keep_on_change: bool = False  # keep the folder when the key changes (the stage caches by its own keys)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("world", run_world, (), ("world",)),
    Stage("pretrain", run_pretrain, ("world",), ("base", "pretrain"), ("data.text_files", "data.sft_files")),
    Stage("sft", run_sft, ("world", "pretrain"), ("base", "sft", "sft_replay"), ("data.sft_files", "data.text_files")),
    Stage("pas", run_pas, ("world", "pretrain", "sft"), ("pas",), ("data.pas_files",)),
    Stage("prefs", run_prefs, ("world", "pretrain", "sft"), ("prefs",), ("data.prompt_files",), ("grpo.rewards", "llm")),
    Stage("rm", run_rm, ("prefs", "sft"), ("rm",), ("data.preference_files",)),
    Stage("grpo", run_grpo, ("world", "sft", "prefs", "rm"), ("grpo", "rl_rewards", "rl_prompt_filter"),
          ("data.rl_prompt_files", "data.sft_files", "rl_capabilities"), ("llm",)),
    Stage("merge", run_merge, ("world", "sft"), ("merge",), ("data.sft_files",)),
    Stage("eval", run_eval, ("world", "pretrain", "sft", "pas", "grpo", "merge"), ("base", "eval"),
          ("data.eval_suites",), ("llm",), keep_on_change=True),
    Stage("report", run_report, ("eval",), ()),
]}
