"""The same pipeline on the local executor and on Ray (a local Ray, 2 CPUs) gives the same bytes: a CPU map step
(filter, language) over Ray Data actors, MinHash signatures as Ray tasks, and an LLM step whose Ray workers
each hold their own client on the one shared request cache."""

import json

import pytest

from counting_llm import CountingLLM
from novalign.config.llm import LLMConfig
from novalign.flywheel.pipeline import Pipeline

ray = pytest.importorskip("ray")


def test_local_and_ray_give_the_same_output(tmp_path):
    prompts = [f"Prompt number {i}: explain topic {i % 7} in simple words." for i in range(40)]
    prompts += [prompts[3] + " ", prompts[5].upper(), "x"]  # an exact repeat, a case repeat, a too-short one
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    server = CountingLLM()
    try:
        def run(executor):
            llm = LLMConfig(base_url=server.url, model="m", api_key="k", cache_path=str(tmp_path / f"{executor}.sqlite"))
            p = Pipeline(tmp_path / executor, llm=llm, executor=executor, workers=2, batch_size=8, progress=False)
            p.source("p", src)
            p.step("len", "filter", {"min_chars": 5})
            p.step("lang", "language", {})
            p.step("near", "minhash_dedup", {"threshold": 0.9, "ngram": 5})
            p.step("gen", "llm_generate", {"models": [{"name": "m"}], "n": 2, "temperature": 0.5})
            return p.run()

        local = run("local")
        asked = server.requests_answered
        on_ray = run("ray")
    finally:
        server.close()
        if ray.is_initialized():
            ray.shutdown()
    assert [s["records_out"] for s in local.steps] == [42, 42, 40, 80]
    for name in ("len", "lang", "near", "gen"):
        assert local.outputs[name].read_bytes() == on_ray.outputs[name].read_bytes(), name
    assert server.requests_answered == 2 * asked  # ray's run had its own empty cache: each request once more
    assert {s["executor"] for s in on_ray.steps} == {"ray"}
