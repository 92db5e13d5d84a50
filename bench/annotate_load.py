"""Benchmark: the annotation app under concurrent annotators, on SQLite and on PostgreSQL (issue 19).

What it measures
----------------
For each database a fresh one is made (SQLite in a temporary folder; PostgreSQL as a throwaway server,
``novalign.annotate.tempdb``, fsync on), seeded with ``--tasks`` preference tasks (2 responses each, overlap
k=2) and ``--clients`` annotator accounts, and served by a real ``novalign annotate serve --workers N``
subprocess on 127.0.0.1. Then ``--clients`` clients (coroutines on one asyncio loop in this process, one
keep-alive connection each: ``novalign.annotate.loadgen``) each log in and loop for ``--seconds``: ask for the
next task (POST /api/projects/1/next), wait ``--think-ms``, submit a full result. Afterwards the database is
read back:

* ``submissions``: acknowledged submits; ``lost``: acknowledged but not stored; ``duplicated``: stored twice for
  one (task, annotator), or a task above k; ``unacknowledged_stored``: stored without an acknowledgement;
* ``next_p50_ms`` / ``next_p95_ms``: time to the next task as the client sees it (the issue's target: p95 under
  200 ms); ``next_server_p50_ms`` / ``next_server_p95_ms``: the part spent inside the app (its
  ``Server-Timing`` header); ``submit_p50_ms`` / ``submit_p95_ms``; ``errors``: non-200 answers;
* ``server_cpu_ms_per_submission``: CPU seconds of the server's processes (all workers) during the loop per
  submission (one next-task and one submit request) -- unlike the latencies it hardly depends on what else
  runs on the machine; ``client_cpu_ms_per_submission``: the same for the load generator, which shares the
  machine's cores with the server; ``db_cpu_ms_per_submission`` (PostgreSQL): the database server's processes;
  ``load_avg``: the 1-minute load average before and after; ``meets_target``: the issue's target (no lost
  or duplicated submission, no error, ``next_p95_ms`` under 200).

Baseline, measured in the same run: one client alone for ``--baseline-seconds`` on the same server (its
latencies are the app's floor on this machine; the load numbers are read against them). Before it, all
clients run ``--warmup-seconds`` on a second project (not reported), so that every worker has opened its
database connections and compiled its statements.

Think time. ``--think-ms`` (default 500) is the pause between receiving a task and submitting it. A person
reading a multi-turn prompt, ranking the responses, scoring three dimensions and marking spans takes a minute
or more per task, so 0.5 s is about a hundred times harsher than 50 real annotators: 50 clients at 0.5 s
offer up to ~100 submissions/s, the load of several thousand people. It is kept that short so that 2
minutes exercise thousands of submissions and the routing's races; it is not a model of human pacing.

Logins use Argon2's cheapest parameters (NOVALIGN_ARGON2_PROFILE=CHEAPEST): logins are not what is measured.

    nice -n 10 python bench/annotate_load.py        # 50 clients, 2 min per database, 2 workers: about 6 min
    python bench/annotate_load.py --clients 10 --seconds 20 --databases sqlite --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NOVALIGN_ARGON2_PROFILE", "CHEAPEST")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cli_server import start_server, stop  # noqa: E402
from novalign.annotate.accounts import create_user  # noqa: E402
from novalign.annotate.db import make_engine, migrate, session_factory  # noqa: E402
from novalign.annotate.loadgen import run_load  # noqa: E402
from novalign.annotate.projects import create_project, import_file  # noqa: E402
from novalign.annotate.tempdb import TempPostgres  # noqa: E402

PASSWORD = "bench-password"


def seed(db_url: str, tmp: Path, tasks: int, clients: int) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    path = tmp / "tasks.jsonl"
    with path.open("w") as fh:
        for i in range(tasks):
            fh.write(json.dumps({"task_id": f"t{i}", "prompt": f"Question {i}?", "labels": {"ability": "KQA"},
                                 "responses": [{"response_id": "a", "content": f"Answer a{i}."},
                                               {"response_id": "b", "content": f"Answer b{i}."}]}) + "\n")
    with session_factory(engine)() as s:
        for name in ["solo"] + [f"c{i}" for i in range(clients)]:
            create_user(s, name, PASSWORD, "annotator", ["*"])
        s.commit()
        import_file(s, create_project(s, "load", overlap=2), path)  # project 1: measured
        import_file(s, create_project(s, "warmup", overlap=2), path)  # project 2: warm-up, not measured
    engine.dispose()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants, living or reaped, from Linux's /proc."""
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # utime + stime, and cutime + cstime: the CPU of its children that have exited and been reaped
            # (PostgreSQL backends of closed connections)
            total += sum(int(f) for f in fields[11:15]) / tick
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(db_url: str, tmp: Path, args, db_pid: int | None = None) -> dict:
    """One database kind; ``db_pid``: the PostgreSQL postmaster, whose processes' CPU is reported too."""
    seed(db_url, tmp, args.tasks, args.clients)
    proc, url, _ = start_server(["annotate", "serve", "--db", db_url, "--port", "0", "--workers", str(args.workers)],
                                marker="novalign annotate:")
    try:
        base, think, cpu = url.rstrip("/"), args.think_ms / 1000, lambda: process_tree_cpu(proc.pid)
        clients = [f"c{i}" for i in range(args.clients)]
        # warm-up on project 2 (not reported): every worker opens its connections and compiles its statements
        run_load(base, db_url, clients, PASSWORD, 2, args.warmup_seconds, think)
        db0 = process_tree_cpu(db_pid) if db_pid else 0.0
        baseline = run_load(base, db_url, ["solo"], PASSWORD, 1, args.baseline_seconds, think, cpu)
        db1, load_before = process_tree_cpu(db_pid) if db_pid else 0.0, os.getloadavg()[0]
        load = run_load(base, db_url, clients, PASSWORD, 1, args.seconds, think, cpu)
        db2 = process_tree_cpu(db_pid) if db_pid else 0.0
        load["load_avg"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        if db_pid:  # the database server's own CPU (its logins and read-back included: an overestimate)
            for run, used in ((baseline, db1 - db0), (load, db2 - db1)):
                run["db_cpu_ms_per_submission"] = round(used * 1000 / max(1, run["submissions"]), 2)
    finally:
        stop(proc)
    # the target: zero lost or duplicated submissions, p95 time to the next task under 200 ms
    load["meets_target"] = (load["lost"] == 0 and load["duplicated"] == 0 and load["errors"] == 0
                            and load["next_p95_ms"] is not None and load["next_p95_ms"] < 200)
    load["baseline_1_client"] = {k: baseline[k] for k in (
        "submissions", "next_p50_ms", "next_p95_ms", "next_server_p95_ms", "submit_p95_ms",
        "server_cpu_ms_per_submission", "client_cpu_ms_per_submission", "db_cpu_ms_per_submission") if k in baseline}
    return load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--baseline-seconds", type=float, default=20)
    ap.add_argument("--warmup-seconds", type=float, default=5)
    ap.add_argument("--think-ms", type=float, default=500)
    ap.add_argument("--tasks", type=int, default=8000)
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (this machine has 2 cores)")
    args = ap.parse_args()
    out = {"bench": "annotate_load", "clients": args.clients, "seconds": args.seconds, "think_ms": args.think_ms,
           "workers": args.workers, "cpus": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 1)}
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "sqlite":
                out[kind] = measure(f"sqlite:///{tmp}/annotate.db", Path(tmp), args)
            else:
                with TempPostgres(fsync=True) as pg:
                    postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
                    out[kind] = measure(pg.create_database("bench"), Path(tmp), args, postmaster)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
