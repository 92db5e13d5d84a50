"""The annotation app over real HTTP (a ``novalign annotate serve`` subprocess), the same tests on SQLite and
on a real PostgreSQL: routing by skills with overlap k, leases and re-routing, exactly-once submission, review,
QC numbers, exports, Label Studio import, and a short concurrent load."""

from __future__ import annotations

import json
import re
import time

import httpx2
import psutil
import pytest

from annotate_kit import PASSWORD, Client, full_result, shared_env
from novalign.annotate.loadgen import run_load
from scripted_llm import ScriptedLLM

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory):
    return shared_env(request.param, tmp_path_factory.getbasetemp())


def test_routing_submit_review_qc_export(env):
    """Routing on project 1 (k=2; m1 is Math, c1 is Code), open tasks in task order:
    ann_code -> c1 (its only skill); ann_math -> m1, and again m1 (the lease it holds); ann_any -> m1 (it has a
    free slot and comes first); ann_mc -> c1 (m1 is full). Then nothing is left for ann_any.

    QC before review: m1 rankings r0>r1>r2 (ann_math) and r0>r2>r1 (ann_any): of 3 pairs 2 concordant, 1
    discordant, tau = 1/3; c1 twice r0>r1>r2, tau = 1; mean tau = (1/3 + 1) / 2 = 2/3 over 2 pairs.

    RM export after rejecting ann_any's m1: ann_math's helpfulness on m1 is r0 5, r1 3, r2 1, edit 5; minmax
    over ann_math's own scores gives 1, .5, 0, 1; fluency and safety are all 5 (one value: 0.5 each). r-hat =
    (h + .5 + .5) / 3: r0 2/3, r1 1/2, r2 1/3, the edit 2/3."""
    base = env["base"]
    c = {name: Client(base, name) for name in ("ann_code", "ann_math", "ann_any", "ann_mc", "admin", "rev")}
    got = {name: c[name].next() for name in ("ann_code", "ann_math")}
    assert got["ann_code"]["task"]["task_id"] == "c1" and got["ann_math"]["task"]["task_id"] == "m1"
    assert c["ann_math"].next()["assignment_id"] == got["ann_math"]["assignment_id"]
    got["ann_any"], got["ann_mc"] = c["ann_any"].next(), c["ann_mc"].next()
    assert got["ann_any"]["task"]["task_id"] == "m1" and got["ann_mc"]["task"]["task_id"] == "c1"

    m1 = got["ann_math"]["task"]
    bad = c["ann_math"].submit(got["ann_math"]["assignment_id"], {"ranking": [["r0"], ["r1"]]})
    assert bad.status_code == 422 and "not a partition" in bad.json()["detail"]
    mine = full_result(m1, [0, 1, 2])
    mine["scores"].update({"r0": {"helpfulness": 5, "fluency": 5, "safety": 5},
                           "r1": {"helpfulness": 3, "fluency": 5, "safety": 5},
                           "r2": {"helpfulness": 1, "fluency": 5, "safety": 5},
                           "r2-edit": {"helpfulness": 5, "fluency": 5, "safety": 5}})
    mine["edits"] = [{"response_id": "r2", "new_response_id": "r2-edit", "content": "Fixed answer."}]
    mine["spans"] = [{"response_id": "r2", "start": 0, "end": 6, "kind": "factual", "note": "wrong"}]
    ok = c["ann_math"].submit(got["ann_math"]["assignment_id"], mine)
    assert ok.status_code == 200, ok.text
    again = c["ann_math"].submit(got["ann_math"]["assignment_id"], mine)
    assert again.status_code == 409  # exactly once
    assert c["ann_any"].submit(got["ann_any"]["assignment_id"], full_result(m1, [0, 2, 1])).status_code == 200
    for name in ("ann_code", "ann_mc"):
        assert c[name].submit(got[name]["assignment_id"], full_result(got[name]["task"], [0, 1, 2])).status_code == 200
    assert c["ann_any"].next()["assignment_id"] is None

    qc = c["rev"].http.get("/api/projects/1/qc").json()
    assert qc["agreement"]["kendall_tau"] == pytest.approx(2 / 3) and qc["agreement"]["tau_pairs"] == 2
    assert qc["annotators"]["ann_math"]["submissions"] == 1

    review = c["rev"].http.get("/projects/1/review").text
    sub_ids = [int(x) for x in re.findall(r'id="sub-(\d+)"', review)]
    any_sub = sub_ids[1]  # submissions in id order: ann_math, ann_any, ann_code, ann_mc
    assert c["rev"].form(f"/submissions/{any_sub}/review", {"verdict": "reject", "note": "careless"}).status_code == 303
    assert c["rev"].form(f"/submissions/{sub_ids[0]}/review", {"verdict": "accept"}).status_code == 303
    # the rejected slot of m1 is open again: ann_mc (Math) gets it
    assert c["ann_mc"].next()["task"]["task_id"] == "m1"

    rm = [json.loads(x) for x in c["admin"].http.get("/projects/1/export/rm").text.splitlines()]
    group = next(g for g in rm if g["task_id"] == "m1")
    scores = {r["response_id"]: r["score"] for r in group["responses"]}
    edit_id = next(k for k in scores if k.startswith("r2-edit"))
    assert scores == pytest.approx({"r0": 2 / 3, "r1": 0.5, "r2": 1 / 3, edit_id: 2 / 3}, abs=1e-6)
    assert group["prompt"][0] == {"role": "system", "content": "Be exact."}
    trl = [json.loads(x) for x in c["admin"].http.get("/projects/1/export/trl").text.splitlines()]
    assert sum(p["task_id"] == "m1" for p in trl) == 4  # r0>r1, r0>r2, r1>r2 and the edit over r2
    sft = [json.loads(x) for x in c["admin"].http.get("/projects/1/export/sft").text.splitlines()]
    assert sft == [{"messages": m1["prompt"] + [{"role": "assistant", "content": "Fixed answer."}],
                    "meta": {"task_id": "m1", "annotator": "ann_math", "edited_from": "r2"}}]

    # Label Studio out and back in (as a new project): the results survive the round trip
    ls = c["admin"].http.get("/projects/1/export/label-studio").json()
    assert c["admin"].form("/admin/projects", {"name": "ls-copy", "overlap": 2}).status_code == 303
    path = env["tmp"] / "ls.json"
    path.write_text(json.dumps(ls))
    with path.open("rb") as fh:
        new_id = max(int(x) for x in re.findall(r"/admin/projects/(\d+)/import", c["admin"].http.get("/admin").text))
        r = c["admin"].form(f"/admin/projects/{new_id}/import", {}, files={"file": ("ls.json", fh, "application/json")})
    assert "imported 2 tasks and 3 results" in r.headers["location"].replace("+", " ")
    back = [json.loads(x) for x in c["admin"].http.get(f"/projects/{new_id}/export/results").text.splitlines()]
    assert {(b["task_id"], b["annotator"]) for b in back} == {("m1", "ls:ann_math"), ("c1", "ls:ann_code"),
                                                             ("c1", "ls:ann_mc")}
    ours = next(b for b in back if b["annotator"] == "ls:ann_math")
    assert ours["ranking"] == mine["ranking"] and ours["spans"] == mine["spans"]
    assert ours["scores"]["r0"] == mine["scores"]["r0"]
    for x in c.values():
        x.close()


def test_expired_lease_is_rerouted(env):
    """Project 2: k=1, leases of 1 s. A second annotator gets nothing while the first holds the slot, gets the
    same slot once the lease has expired, and the first annotator can no longer submit it."""
    first, second = Client(env["base"], "ann_math"), Client(env["base"], "ann_any")
    a = first.next(2)
    assert a["task"]["task_id"] == "x1" and second.next(2)["assignment_id"] is None
    time.sleep(1.3)
    b = second.next(2)
    assert b["assignment_id"] == a["assignment_id"]
    assert first.submit(a["assignment_id"], full_result(a["task"], [0, 1, 2])).status_code == 404
    assert second.submit(b["assignment_id"], full_result(b["task"], [0, 1, 2])).status_code == 200


def test_short_concurrent_load(env):
    """8 clients for 2 s on project 3 (20 tasks, k=2): every acknowledged submission is stored, none twice."""
    report = run_load(env["base"], env["db"], [f"load{i}" for i in range(8)], PASSWORD, 3, seconds=2)
    assert report["submissions"] > 0 and report["errors"] == 0, report
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["unacknowledged_stored"] == 0, report


def test_two_workers_share_sessions(env):
    """The shared app is ``serve --workers 2``. A session opened on whichever worker took the login is honoured
    by the other one: fresh connections -- each accepted by either worker, as the kernel hands them out -- keep
    reading the session's tasks and posting with its CSRF token until both workers have answered (bounded)."""
    owner = Client(env["base"], "ann_any")
    workers = {w.pid: w for w in psutil.Process(env["pid"]).children()  # (not multiprocessing's resource tracker)
               if "spawn_main" in " ".join(w.cmdline())}
    assert len(workers) == 2, workers
    port = int(env["base"].rsplit(":", 1)[1])
    answered_by: set[int] = set()
    for _ in range(80):
        with httpx2.Client(base_url=env["base"], cookies=owner.http.cookies, timeout=30) as fresh:
            r = fresh.get("/api/assignments")
            assert r.status_code == 200, r.text
            assert fresh.post("/api/projects/3/next", headers={"X-CSRF-Token": owner.csrf}).status_code == 200
            assert fresh.post("/api/projects/3/next", headers={"X-CSRF-Token": "forged"}).status_code == 403
            mine = r.extensions["network_stream"].get_extra_info("client_addr")[1]
            answered_by |= {pid for pid, w in workers.items() for c in w.net_connections("tcp")
                            if c.laddr.port == port and c.raddr and c.raddr.port == mine}
        if len(answered_by) == 2:
            break
    assert answered_by == set(workers), answered_by
    owner.close()


def test_llm_critique_is_asked_once(env, tmp_path):
    """A project with a critique LLM (a scripted OpenAI-compatible server standing in for an external model):
    the first request for a response's critique asks the LLM, through the LLM client, with the conversation
    and the answer; the second is served from the stored critique, and the LLM is not asked again."""
    llm = ScriptedLLM(lambda route, messages: f"Check the year. ({len(messages)} messages)")
    try:
        admin = Client(env["base"], "admin")
        cfg = {"base_url": llm.base_url("critic"), "model": "critic", "api_key": "k",
               "cache_path": str(tmp_path / "llm-cache.sqlite")}
        name = f"critique-{env['kind']}"
        assert admin.form("/admin/projects", {"name": name, "overlap": 1, "critique_llm": json.dumps(cfg)}).status_code == 303
        pid = max(int(x) for x in re.findall(r"/admin/projects/(\d+)/import", admin.http.get("/admin").text))
        path = tmp_path / "critique.jsonl"
        path.write_text(json.dumps({"prompt": "When did the war end?", "responses": ["In 1946.", "In 1945."],
                                    "labels": {"ability": "KQA"}}) + "\n")
        with path.open("rb") as fh:
            admin.form(f"/admin/projects/{pid}/import", {}, files={"file": ("critique.jsonl", fh)})
        ann = Client(env["base"], "ann_any")
        got = ann.next(pid)
        assert got["task"]["task_id"] == "critique.jsonl:1"
        rid = got["task"]["responses"][0]["id"]
        first = ann.http.post(f"/api/responses/{rid}/critique", headers={"X-CSRF-Token": ann.csrf}).json()
        second = ann.http.post(f"/api/responses/{rid}/critique", headers={"X-CSRF-Token": ann.csrf}).json()
        assert first == {"critique": "Check the year. (2 messages)", "cached": False}
        assert second == {"critique": first["critique"], "cached": True}
        assert len(llm.bodies["critic"]) == 1
        assert "In 1946." in llm.bodies["critic"][0]["messages"][1]["content"]
        outsider = Client(env["base"], "ann_code")  # holds nothing of this task
        assert outsider.http.post(f"/api/responses/{rid}/critique",
                                  headers={"X-CSRF-Token": outsider.csrf}).status_code == 404
    finally:
        llm.close()
