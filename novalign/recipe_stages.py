"""The stages of ``novalign run``: each ``run_<stage>(ctx)`` fills in the paths of its stage config and calls
the same entry point as the stage's own command (``novalign sft``, ``rm``, ``grpo``, ``merge``).
Orchestration (keys, done markers, resume) is in :mod:`novalign.recipe`; the report in :mod:`novalign.report`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from novalign.recipe import RecipeContext

__all__ = ["base_model_dir", "stage_models", "rouge_filter", "world_verifier"] + [
    f"run_{s}" for s in ("world", "pretrain", "sft", "pas", "prefs", "rm", "grpo", "merge", "eval", "report")]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def base_model_dir(ctx: RecipeContext) -> str:
    """The base model: ``base.path`` when given, else the pretrain stage's model."""
    if ctx.cfg.base.path:
        return ctx.cfg.base.path
    if not ctx.enabled("pretrain"):
        raise ValueError("no base model: set base.path or enable the pretrain stage")
    return str(ctx.dir("pretrain") / "model")


def _world_file(ctx: RecipeContext, name: str) -> str:
    return str(ctx.dir("world") / f"{name}.jsonl")


# ------------------------------------------------------------------------------------- world, pretrain, SFT


def run_world(ctx: RecipeContext) -> None:
    from novalign.world.generator import build_world, write_world

    world = build_world(ctx.cfg.world)
    files = write_world(world, ctx.out)
    counts = {split: {cap: len(tasks) for cap, tasks in world[split].items()} for split in ("sft", "rl", "eval")}
    chars = sum(len(d) for d in world["corpus"])
    (ctx.out / "world.json").write_text(json.dumps({"files": files, "counts": counts, "corpus_documents":
                                                    len(world["corpus"]), "corpus_chars": chars}, indent=1))
    ctx.print(f"world: {len(world['corpus'])} corpus documents ({chars} characters), {counts['sft']} SFT tasks")


def run_pretrain(ctx: RecipeContext) -> None:
    """A tiny model whose tokenizer is trained on the world's texts, pretrained on the plain-text corpus."""
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    b = ctx.cfg.base
    corpus = [r["text"] for r in _read_jsonl(_world_file(ctx, "corpus"))]
    chats = [m["content"] for r in _read_jsonl(_world_file(ctx, "sft")) for m in r["messages"]]
    init_tiny_model(ctx.out / "init", arch=b.arch, vocab_size=b.vocab_size, hidden_size=b.hidden_size,
                    num_layers=b.num_layers, num_heads=b.num_heads, num_kv_heads=b.num_kv_heads,
                    intermediate_size=b.intermediate_size, seed=b.seed, texts=corpus + chats)
    cfg = ctx.cfg.pretrain.model_copy(deep=True)
    cfg.output_dir = str(ctx.out)
    cfg.model.path = str(ctx.out / "init")
    cfg.data.train_files, cfg.data.text_files = [], [_world_file(ctx, "corpus")]
    run_sft(cfg, console_print=ctx.print)


def _sft(ctx: RecipeContext, cfg, out: Path, model_path: str, train_files: list[str], replay: float) -> None:
    from novalign.train.sft import run_sft

    cfg = cfg.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(out), model_path
    cfg.data.train_files = train_files
    cfg.data.text_files = []
    if replay > 0:  # a seeded sample of the corpus, trained as plain text next to the chat data
        docs = _read_jsonl(_world_file(ctx, "corpus"))
        rng = random.Random(f"replay-{cfg.train.seed}")
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / "replay.jsonl", rng.sample(docs, max(1, int(len(docs) * replay))))
        cfg.data.text_files = [str(out / "replay.jsonl")]
    run_sft(cfg, console_print=ctx.print)


def run_sft(ctx: RecipeContext) -> None:
    _sft(ctx, ctx.cfg.sft, ctx.out, base_model_dir(ctx), [_world_file(ctx, "sft")], ctx.cfg.sft_replay)


# ------------------------------------------------------------------------------------------------- PAS


def run_pas(ctx: RecipeContext) -> None:
    """The PAS model (report section 4.6): fine-tuned from the SFT (or base) model on the world's PAS data --
    implicit-requirement prompts -> the explicit instruction, other prompts -> the abstain complement -- with
    the same entry point as ``novalign pas train`` (the section 4.6 template around each prompt)."""
    from novalign.pas.train import run_pas_train

    p = ctx.cfg.pas
    cfg = p.train.model_copy(deep=True)
    cfg.output_dir = str(ctx.out / "trainer")  # the model lands in pas/trainer/model
    cfg.pas_files = [_world_file(ctx, "pas")]
    cfg.model.path = str(ctx.dir("sft") / "model") if p.init == "sft" else base_model_dir(ctx)
    run_pas_train(cfg, console_print=ctx.print)


def pas_model_dir(ctx: RecipeContext) -> str:
    return str(ctx.dir("pas") / "trainer" / "model")


def augment_tasks(ctx: RecipeContext, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
    """``tasks`` with each last user message rewritten by the PAS model (greedy, abstain -> unchanged);
    returns (augmented tasks, one ``Augmentation.to_dict()`` per task)."""
    from novalign.pas.augment import PromptAugmenter

    p = ctx.cfg.pas
    augmenter = PromptAugmenter.from_model(pas_model_dir(ctx), device="cpu", join_template=p.join,
                                           max_tokens=p.max_tokens, abstain=p.abstain)
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


def rouge_filter(responses: list[str], threshold: float) -> tuple[list[int], int]:
    """Indices of the responses kept after dropping near-duplicates: a response whose ROUGE-L F1 with an
    already kept one is >= ``threshold`` is dropped (report section 3.3: "a rouge rule based filter is used to
    roughly filter the similar responses"; ROUGE-L after Lin, 2004).
    Returns (kept indices, number dropped). Exact duplicates always score 1.0."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    kept: list[int] = []
    for i, text in enumerate(responses):
        dup = any(text == responses[j] or scorer.score(responses[j], text)["rougeL"].fmeasure >= threshold
                  for j in kept)
        if not dup:
            kept.append(i)
    return kept, len(responses) - len(kept)


def world_verifier(response: str, check: dict) -> float:
    """The world's checkers as an RL reward (partial credit for IF and Role)."""
    from novalign.world.checkers import score

    return score(response, check)


def run_prefs(ctx: RecipeContext) -> None:
    """n samples per RL prompt from the SFT model, scored by the verifiers (the golden-answer AutoRator),
    empty replies and near-duplicates (ROUGE-L) removed; groups with at least two distinct scores become preference records
    ``{prompt, responses: [{content, score}]}`` (scores in [0, 1], normalized by the RM's ScoreConfig).
    Report section 3.3: n samples per prompt, a ROUGE filter, a golden-answer AutoRator, and "prompts with all
    high-scoring responses or very similar scoring responses are removed"."""
    from novalign.models.load import load_model, load_tokenizer
    from novalign.world.evaluate import generate_texts, prompt_ids

    p = ctx.cfg.prefs
    prompts = _read_jsonl(_world_file(ctx, "rl_prompts"))
    model_dir = str(ctx.dir("sft") / "model")
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, dtype="float32")
    ids = [prompt_ids(tokenizer, r, plain=False) for r in prompts for _ in range(p.n)]
    texts = generate_texts(model, tokenizer, ids, max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                           batch_size=p.batch_size, seed=p.seed)
    groups, stats = [], {"prompts": len(prompts), "samples": len(texts), "dropped_near_duplicates": 0, "dropped_empty": 0,
                         "groups_without_signal": 0, "sample_pass_rate": {}}
    per_cap: dict[str, list[float]] = {}
    prompt_stats: list[dict] = []
    for g, record in enumerate(prompts):
        samples = texts[g * p.n : (g + 1) * p.n]
        scores = [world_verifier(t, record["check"]) for t in samples]
        prompt_stats.append({"index": g, "capability": record["capability"], "scores": scores})
        per_cap.setdefault(record["capability"], []).extend(s >= 1.0 for s in scores)
        nonempty = [i for i, t in enumerate(samples) if t.strip()]  # an empty reply is no preference response
        stats["dropped_empty"] += len(samples) - len(nonempty)
        kept, dropped = rouge_filter([samples[i] for i in nonempty], p.rouge_threshold)
        kept = [nonempty[i] for i in kept]
        stats["dropped_near_duplicates"] += dropped
        if len({scores[i] for i in kept}) < 2:
            stats["groups_without_signal"] += 1
            continue
        groups.append({"prompt": record["messages"], "capability": record["capability"],
                       "responses": [{"content": samples[i], "score": scores[i]} for i in kept]})
    stats["sample_pass_rate"] = {c: sum(v) / len(v) for c, v in per_cap.items()}
    stats["groups"] = len(groups)
    if not groups:
        raise ValueError("prefs: no prompt had samples with different scores; raise prefs.n or prefs.temperature")
    _write_jsonl(ctx.out / "prefs.jsonl", groups)
    _write_jsonl(ctx.out / "prompt_scores.jsonl", prompt_stats)
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=1))
    ctx.print(f"prefs: {len(groups)} groups; SFT sample pass rate {stats['sample_pass_rate']}")


def run_rm(ctx: RecipeContext) -> None:
    from novalign.train.rm import run_rm as train_rm

    cfg = ctx.cfg.rm.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(ctx.out), str(ctx.dir("sft") / "model")
    cfg.data.train_files = [str(ctx.dir("prefs") / "prefs.jsonl")]
    train_rm(cfg, console_print=ctx.print)


def _mixed_prompts(ctx: RecipeContext) -> Path:
    """The RL prompts whose SFT samples (prefs stage) did not all score the same (grpo/mixed_prompts.jsonl).
    A group whose samples all score alike has zero advantage in GRPO and teaches nothing."""
    if not ctx.enabled("prefs"):
        raise ValueError("rl_prompt_filter 'mixed' needs the prefs stage (it reads the SFT samples' scores)")
    prompts = _read_jsonl(_world_file(ctx, "rl_prompts"))
    stats = _read_jsonl(ctx.dir("prefs") / "prompt_scores.jsonl")
    chosen = [prompts[s["index"]] for s in stats if len(set(s["scores"])) > 1]
    if not chosen:
        raise ValueError("rl_prompt_filter 'mixed': no RL prompt had samples with different scores")
    ctx.print(f"grpo: {len(chosen)} of {len(prompts)} RL prompts have mixed SFT outcomes")
    path = ctx.out / "mixed_prompts.jsonl"
    _write_jsonl(path, chosen)
    return path


def _grpo_prompts(ctx: RecipeContext) -> Path:
    """GRPO's prompts, written to grpo/prompts.jsonl: the world's GRPO pool when it has one, else the RL split
    (with ``rl_prompt_filter: mixed``, only the prompts whose SFT samples scored differently); then only the
    ``rl_capabilities``."""
    pool = ctx.dir("world") / "grpo_prompts.jsonl"
    if pool.is_file():
        if ctx.cfg.rl_prompt_filter == "mixed":
            raise ValueError("rl_prompt_filter 'mixed' reads the prefs stage's scores of the RL split; with a GRPO "
                             "pool (world.grpo_per_capability > 0) use rl_prompt_filter: all")
        prompts = _read_jsonl(pool)
    elif ctx.cfg.rl_prompt_filter == "mixed":
        prompts = _read_jsonl(_mixed_prompts(ctx))
    else:
        prompts = _read_jsonl(_world_file(ctx, "rl_prompts"))
    caps = ctx.cfg.rl_capabilities
    if caps is not None:
        from novalign.world.tasks import CAPABILITIES

        if unknown := sorted(set(caps) - set(CAPABILITIES)):
            raise ValueError(f"rl_capabilities: unknown {unknown}; the world's capabilities are {sorted(CAPABILITIES)}")
        prompts = [r for r in prompts if r["capability"] in caps]
        if not prompts:
            raise ValueError(f"rl_capabilities {caps}: no GRPO prompt left")
    path = ctx.out / "prompts.jsonl"
    _write_jsonl(path, prompts)
    counts: dict[str, int] = {}
    for r in prompts:
        counts[r["capability"]] = counts.get(r["capability"], 0) + 1
    ctx.print(f"grpo: {len(prompts)} prompts {counts}")
    return path


def run_grpo(ctx: RecipeContext) -> None:
    """GRPO from the SFT model on the RL prompts; reward = verifiers (+ the reward model of the rm stage)."""
    from novalign.train.rl.rewards import reward_model_reward, verifier_reward, weighted_mix
    from novalign.train.grpo import run_grpo as train_grpo

    cfg = ctx.cfg.grpo.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(ctx.out), str(ctx.dir("sft") / "model")
    cfg.prompt_files = [str(_grpo_prompts(ctx))]
    if cfg.ptx.coef > 0 and not cfg.ptx.train_files:
        cfg.ptx.train_files = [_world_file(ctx, "sft")]
    w = ctx.cfg.rl_rewards
    parts = [(verifier_reward(world_verifier, name="verifier"), w.verifier)]
    if w.reward_model and ctx.enabled("rm"):
        parts.append((reward_model_reward(str(ctx.dir("rm") / "model")), w.reward_model))
    train_grpo(cfg, reward=weighted_mix(parts), console_print=ctx.print)


# ------------------------------------------------------------------------------------------------ merge


def run_merge(ctx: RecipeContext) -> None:
    """Capability specialists continued from the SFT model, then merged by each method (base: the SFT model)."""
    from novalign.config import MergeConfig, MergeModelConfig
    from novalign.merge import merge_models

    m, sft_model = ctx.cfg.merge, str(ctx.dir("sft") / "model")
    if len(m.specialists) < 2:
        raise ValueError("merge.specialists: give at least two specialists to merge")
    paths = []
    for spec in m.specialists:
        out = ctx.out / f"spec_{spec.name}"
        out.mkdir(parents=True, exist_ok=True)
        rng, rows = random.Random(f"spec-{spec.name}"), []
        for path in sorted(ctx.dir("world").glob("sft_*.jsonl")):
            cap_rows = _read_jsonl(path)
            cap = path.stem.removeprefix("sft_")
            rows += cap_rows if cap in spec.focus else rng.sample(cap_rows, int(len(cap_rows) * spec.other_fraction))
        _write_jsonl(out / "data.jsonl", rows)
        if not (out / "model").is_dir():
            _sft(ctx, m.train, out, sft_model, [str(out / "data.jsonl")], 0.0)
        paths.append(str(out / "model"))
    for method in m.methods:
        cfg = MergeConfig(method=method, base_model=sft_model, output_dir=str(ctx.out / method), overwrite=True,
                          models=[MergeModelConfig(path=p) for p in paths], scale=m.scale)
        result = merge_models(cfg)
        ctx.print(f"merge {method}: {result.num_tensors} tensors in {result.seconds:.1f} s")


def stage_models(ctx: RecipeContext) -> dict[str, tuple[str, bool]]:
    """Every model the recipe made, in report order: label -> (directory, evaluate as plain-text base).
    A label ending in ``+pas`` is that model behind the PAS model."""
    # the base twice: honestly (plain-text few-shot) and, for contrast, with a chat template it never saw
    models = {"base": (base_model_dir(ctx), True), "base_chat": (base_model_dir(ctx), False)}
    if ctx.enabled("sft"):
        models["sft"] = (str(ctx.dir("sft") / "model"), False)
    if ctx.enabled("grpo"):
        models["grpo"] = (str(ctx.dir("grpo") / "model"), False)
    if ctx.enabled("merge"):
        for spec in ctx.cfg.merge.specialists:
            models[f"spec_{spec.name}"] = (str(ctx.dir("merge") / f"spec_{spec.name}" / "model"), False)
        for method in ctx.cfg.merge.methods:
            models[f"merge_{method}"] = (str(ctx.dir("merge") / method), False)
    if ctx.enabled("pas"):
        for label in ctx.cfg.pas.in_front_of:
            if label not in models or models[label][1]:
                raise ValueError(f"pas.in_front_of: {label!r} is not a chat model of this recipe; "
                                 f"choose from {', '.join(m for m, (_, plain) in models.items() if not plain)}")
            models[f"{label}+pas"] = models[label]
    return models


def _model_key(ctx: RecipeContext, label: str) -> str:
    model, pas = label.removesuffix("+pas"), label.endswith("+pas")
    stage = {"base": "pretrain", "base_chat": "pretrain", "sft": "sft", "grpo": "grpo"}.get(model, "merge")
    key = ctx.keys.get(stage, ctx.cfg.base.path or "")
    return key + "+" + ctx.keys["pas"] if pas else key


def run_eval(ctx: RecipeContext) -> None:
    """Pass rate per capability of every stage's model on the held-out world prompts. A model's result is
    cached in ``eval/<label>.json`` under its stage key and the eval settings, so only changed models rerun."""
    import time

    from novalign.recipe import stage_key
    from novalign.world.evaluate import evaluate_model

    tasks = _read_jsonl(_world_file(ctx, "eval"))
    shots: dict[str, list[dict]] = {}
    for t in _read_jsonl(_world_file(ctx, "shots")):
        shots.setdefault(t["capability"], []).append(t)
    e = ctx.cfg.eval
    behind_pas: tuple[list[dict], list[dict]] | None = None  # the PAS rewrite of the prompts, made once
    for label, (path, plain) in stage_models(ctx).items():
        key = stage_key({"eval": e.model_dump(), "plain": plain}, {label: _model_key(ctx, label), "world": ctx.keys["world"]})
        out = ctx.out / f"{label}.json"
        if out.is_file() and json.loads(out.read_text()).get("key") == key:
            continue
        t0 = time.time()
        model_tasks, augmentations = tasks, None
        if label.endswith("+pas"):
            behind_pas = behind_pas or augment_tasks(ctx, tasks)
            model_tasks, augmentations = behind_pas
        result = evaluate_model(path, model_tasks, plain=plain, shots=shots, max_new_tokens=e.max_new_tokens,
                                batch_size=e.batch_size)
        if augmentations is not None:  # what PAS added, next to each reply
            result.rows = [row | {"complement": a["complement"]} for row, a in zip(result.rows, augmentations)]
        _write_jsonl(ctx.out / f"{label}_replies.jsonl", result.rows)
        out.write_text(json.dumps({"key": key, "model": path, "format": "plain few-shot" if plain else "chat",
                                   "rates": result.rates, "wall_s": time.time() - t0}, indent=1))
        ctx.print(f"eval {label}: " + ", ".join(f"{c} {r:.0%}" for c, r in result.rates.items()))


def run_report(ctx: RecipeContext) -> None:
    from novalign.report import write_report

    write_report(ctx)
