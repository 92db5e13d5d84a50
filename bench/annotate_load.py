"""Benchmark: the annotation app under concurrent annotators, on SQLite and on PostgreSQL (issue 19).

What it measures
----------------
For each database a fresh one is made (SQLite in a temporary folder; PostgreSQL as a throwaway server,
``novalign.annotate.tempdb``, fsync on), seeded with ``--tasks`` preference tasks (2 responses each, overlap
k=2) and ``--clients`` annotator accounts, and served by a real ``novalign annotate serve`` subprocess on
127.0.0.1. Then ``--clients`` threads each log in and loop for ``--seconds``: ask for the next task (POST
/api/projects/1/next), wait ``--think-ms`` (the annotator reading; not timed), submit a full result. Afterwards
the database is read back (``novalign.annotate.loadgen``):

* ``submissions``: acknowledged submits; ``lost``: acknowledged but not stored; ``duplicated``: stored twice for
  one (task, annotator), or a task above k; ``unacknowledged_stored``: stored without an acknowledgement;
* ``next_p50_ms`` / ``next_p95_ms``: time to the next task as the client sees it; ``next_server_p50_ms`` /
  ``next_server_p95_ms``: the part spent inside the app (its ``Server-Timing`` header) -- on a small machine the
  50 client threads compete with the server for the same cores, and the difference is theirs;
  ``submit_p95_ms``; ``errors``: non-200 answers.

Baseline, measured in the same run: one client alone for ``--baseline-seconds`` on the same database kind
(its latencies are the app's floor on this machine; the load numbers are read against them).

Logins use Argon2's cheapest parameters (NOVALIGN_ARGON2_PROFILE=CHEAPEST): logins are not what is measured.

    python bench/annotate_load.py                      # 50 clients, 2 minutes per database
    python bench/annotate_load.py --clients 10 --seconds 20 --databases sqlite
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
        import_file(s, create_project(s, "load", overlap=2), path)
    engine.dispose()


def measure(db_url: str, tmp: Path, args) -> dict:
    seed(db_url, tmp, args.tasks, args.clients)
    proc, url, _ = start_server(["annotate", "serve", "--db", db_url, "--port", "0"], marker="novalign annotate:")
    try:
        base = url.rstrip("/")
        think = args.think_ms / 1000
        baseline = run_load(base, db_url, ["solo"], PASSWORD, 1, args.baseline_seconds, think)
        load = run_load(base, db_url, [f"c{i}" for i in range(args.clients)], PASSWORD, 1, args.seconds, think)
    finally:
        stop(proc)
    load["baseline_1_client"] = {k: baseline[k] for k in ("submissions", "next_p50_ms", "next_p95_ms", "submit_p95_ms",
                                                          "next_server_p95_ms")}
    return load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--baseline-seconds", type=float, default=10)
    ap.add_argument("--think-ms", type=float, default=500)
    ap.add_argument("--tasks", type=int, default=8000)
    ap.add_argument("--databases", default="sqlite,postgresql")
    args = ap.parse_args()
    out = {"bench": "annotate_load", "clients": args.clients, "seconds": args.seconds, "think_ms": args.think_ms,
           "cpus": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 1)}
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "sqlite":
                out[kind] = measure(f"sqlite:///{tmp}/annotate.db", Path(tmp), args)
            else:
                with TempPostgres(fsync=True) as pg:
                    out[kind] = measure(pg.create_database("bench"), Path(tmp), args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
