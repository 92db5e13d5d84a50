"""The world's held-out prompts as a ``novalign eval`` suite (novalign.world.suite): the runner's numbers are
those of the direct loop (``world/evaluate.py: evaluate_model``) to the token, in plain and chat mode, and a
second run asks nothing. Also the LLM layer's raw completions and one-batch asking it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from novalign.config import EvalConfig, WorldConfig
from novalign.data.io import DataError
from novalign.eval.runner import run_eval
from novalign.world.evaluate import evaluate_model
from novalign.world.generator import STOP_STRINGS, build_world, few_shot_prompt, write_world
from novalign.world.suite import read_shots, read_world_tasks, world_order

# demo_ci's world, smaller: 7 x 6 = 42 eval prompts, so batches of 16 are 16 + 16 + 10
WORLD = WorldConfig(seed=0, num_countries=12, sft_per_capability=24, rl_per_capability=1, eval_per_capability=6,
                    corpus_fact_repeats=2, corpus_worked_examples=20, pas_prompts=6, pas_abstain_per_capability=2)
BATCH, MAX_TOKENS = 16, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[dict[str, str], str]:
    """The world's files, and a tiny model with a world tokenizer trained a few SFT steps on its chats (so
    replies are words of the world, not noise; some pass)."""
    from novalign.config import SFTConfig
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    tmp = tmp_path_factory.mktemp("world-suite")
    world = build_world(WORLD)
    files = write_world(world, tmp / "world")
    chats = [m["content"] for r in map(json.loads, Path(files["sft"]).read_text().splitlines()) for m in r["messages"]]
    init_tiny_model(tmp / "init", arch="qwen2", vocab_size=400, hidden_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, intermediate_size=128, seed=0, texts=world["corpus"] + chats)
    cfg = SFTConfig.model_validate({
        "output_dir": str(tmp / "sft"), "model": {"path": str(tmp / "init")},
        "data": {"train_files": [files["sft"]], "max_length": 256},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "weight_decay": 0.0},
        "train": {"max_steps": 30, "micro_batch_size": 8, "grad_accum": 1, "seed": 0, "progress": False,
                  "tensorboard": False, "eval_every": 0, "save_every": 0},
    })
    run_sft(cfg, console_print=lambda *_: None)
    return files, str(tmp / "sft" / "model")


def _direct(files: dict[str, str], model: str, plain: bool):
    tasks = read_world_tasks(files["eval"])
    return evaluate_model(model, tasks, plain=plain, shots=read_shots(files["shots"]), max_new_tokens=MAX_TOKENS,
                          batch_size=BATCH)


def _config(files: dict[str, str], model: str, out: Path) -> EvalConfig:
    """The same model twice: ``base`` evaluated plain (few-shot text), ``chat`` through the template."""
    return EvalConfig.model_validate({
        "models": [{"name": "base", "path": model, "max_tokens": MAX_TOKENS, "local": {"device": "cpu", "dtype": "float32"}},
                   {"name": "chat", "path": model, "max_tokens": MAX_TOKENS, "local": {"device": "cpu", "dtype": "float32"}}],
        "suites": [{"type": "world", "data": files["eval"], "options": {"plain": ["base"], "shots": files["shots"]}}],
        "output_dir": str(out), "batch_size": BATCH, "progress": False,
    })


def test_runner_reproduces_evaluate_model_exactly_and_resumes(setup, tmp_path):
    files, model = setup
    summaries = run_eval(_config(files, model, tmp_path))
    for name, plain in (("base", True), ("chat", False)):
        direct = _direct(files, model, plain)
        records = [json.loads(line) for line in (tmp_path / name / "world.jsonl").read_text().splitlines()]
        by_prompt = {}
        for r in records:
            by_prompt.setdefault(r["prompt"], r)
        assert len(records) == len(direct.rows) == 42
        for row in direct.rows:  # every reply identical to the token (greedy, same batches), graded the same
            record = by_prompt[row["prompt"]]
            assert (record["reply"], record["passed"], record["capability"]) == (row["reply"], row["passed"],
                                                                                 row["capability"])
        summary = summaries[name]["world"]
        assert summary["rates"] == direct.rates  # the demo table's numbers: same keys, order and values
        assert summary["metrics"]["pass_rate"] == direct.rates["mean"]
        assert summary["format"] == ("plain" if plain else "chat")
        assert summary["resume"] == {"reused": 0, "asked": 42, "dropped_truncated": 0}
    assert any(r["reply"] for r in direct.rows)  # the model says something: the comparison is not of empties
    assert (tmp_path / "report.md").is_file() and "world" in (tmp_path / "report.md").read_text()

    again = run_eval(_config(files, model, tmp_path))  # resume: everything is stored, nothing is asked
    for name in ("base", "chat"):
        assert again[name]["world"]["resume"] == {"reused": 42, "asked": 0, "dropped_truncated": 0}
        assert again[name]["world"]["rates"] == summaries[name]["world"]["rates"]


def test_raw_completion_is_one_engine_batch_of_the_plain_prompt(setup):
    """The LLM layer's raw prompt: encoded without special tokens and no template, cut at the stop strings,
    and ``run_together`` runs the requests as exactly one ``generate_batch`` (the batch the suite relies on)."""
    from novalign.llm import ChatRequest, LLMClient
    from novalign.llm.local import LocalBackend
    from novalign.models.generate import GenerationRequest, generate_batch

    files, model = setup
    tasks = read_world_tasks(files["eval"])[:5]
    shots = read_shots(files["shots"])
    texts = [few_shot_prompt(t, shots[t["capability"]]) for t in tasks]
    backend = LocalBackend(model, device="cpu", dtype="float32", max_batch_size=2)
    client = LLMClient(backend, print_usage=False, progress=False)
    try:
        engine = backend.engine
        requests = [ChatRequest(prompt=t, temperature=0.0, max_tokens=MAX_TOKENS, stop=list(STOP_STRINGS)) for t in texts]
        assert client.prompt_tokens(requests) == [len(engine.tokenizer(t, add_special_tokens=False)["input_ids"])
                                                  for t in texts]
        results = client.run_together(requests)
        # one batch of all five rows, although the engine's max_batch_size is 2: the caller sized it
        assert (engine.queue.batches_run, engine.queue.largest_batch) == (1, 5)
        rows = [GenerationRequest(engine.tokenizer(t, add_special_tokens=False)["input_ids"], max_new_tokens=MAX_TOKENS,
                                  stop=STOP_STRINGS) for t in texts]
        assert [r.text for r in results] == [o.text for o in generate_batch(engine.model, engine.tokenizer, rows)]
        assert all(not any(s in r.text for s in STOP_STRINGS) for r in results)
    finally:
        client.close()


def test_world_order_is_evaluate_models_batching():
    """Stable sort by length, then chunks: lengths [3, 1, 3, 2, 1] -> order [1, 4, 3, 0, 2] (ties keep file
    order), chunks of 2 -> [1, 4], [3, 0], [2]; unknown lengths keep file order."""
    assert world_order([3, 1, 3, 2, 1], 5, 2) == [[1, 4], [3, 0], [2]]
    assert world_order(None, 3, 2) == [[0, 1], [2]]


def test_bad_world_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "eval.jsonl"
    good = {"capability": "math", "messages": [{"role": "user", "content": "1+1?"}], "check": {"type": "answer", "answer": "2"}}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "check": "2"}) + "\n")
    with pytest.raises(DataError, match=r"eval.jsonl:2.*check"):
        read_world_tasks(path)
