"""retry_failed (issue 15): a recorded LLM failure is final unless the run asks to retry it; then only the
failed records are asked again -- in a complete step too -- and the steps after it rerun from the cache."""

import json

from counting_llm import CountingLLM
from novalign.config.llm import LLMConfig
from novalign.flywheel.pipeline import Pipeline


def _run(tmp_path, server, folder, **kw):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(3)))
    llm = LLMConfig(base_url=server.url, model="m", api_key="k", max_attempts=2, backoff_base_s=0.01)
    p = Pipeline(tmp_path / folder, llm=llm, progress=False, **kw).source("p", prompts)
    p.step("gen", "llm_generate", {"models": [{"name": "a"}], "n": 1, "temperature": 0.7})
    return p.step("exact", "exact_dedup", {"field": "prompt"}).run()


def test_retry_failed_asks_only_the_failed_records_again_and_reruns_what_follows(tmp_path):
    """3 prompts; while the server rejects 'question 1?' (HTTP 400, not retried) the run drops p-2 as 'llm
    failed' and generates 2. A rerun without retry_failed skips both complete steps: no request. With
    retry_failed (the server now answers), the complete gen step is reopened: 1 new generation (p-2), 2 from
    parts.jsonl, and `exact` after it reruns (its records now have p-2). The bytes equal a run that never
    failed. A further retry_failed run finds nothing failed: both steps skipped, no request. Without the
    option the failure would stay (the second run shows it)."""
    fail = {"on": True}
    server = CountingLLM(status=lambda b: 400 if fail["on"] and "question 1?" in json.dumps(b["messages"]) else None)
    try:
        first = _run(tmp_path, server, "run")
        assert first.steps[0]["dropped_by_reason"] == {"llm failed: bad_request": 1}
        assert first.steps[0]["llm_failed"] == 1 and server.requests_generated == 2
        fail["on"] = False
        again = _run(tmp_path, server, "run")
        assert [s["skipped"] for s in again.steps] == [True, True] and server.requests_generated == 2
        retried = _run(tmp_path, server, "run", retry_failed=True)
        gen, exact = retried.steps
        assert server.requests_generated == 3 and not gen["skipped"] and not exact["skipped"]
        assert gen["retried_failed"] == 1 and gen["resumed_records"] == 2 and gen["llm_failed"] == 0
        assert [r["_id"] for r in retried.records("exact")] == ["p-1/a/0", "p-2/a/0", "p-3/a/0"]
        clean = _run(tmp_path, server, "clean")
        for step in ("gen", "exact"):
            assert retried.outputs[step].read_bytes() == clean.outputs[step].read_bytes()
        before = server.requests_generated
        last = _run(tmp_path, server, "run", retry_failed=True)
        assert [s["skipped"] for s in last.steps] == [True, True] and server.requests_generated == before
        assert not list((tmp_path / "run" / "steps").glob("*/_REOPENED"))
    finally:
        server.close()
