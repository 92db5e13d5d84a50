"""The annotation app's pure parts, with values worked out by hand: Kendall's tau of tiered rankings,
Krippendorff's alpha, per-annotator normalized RM targets, gold statistics, routing eligibility; the import
forms with their line-exact errors; Label Studio and Argilla shapes; the CLI's migrate and create-admin."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

os.environ.setdefault("NOVALIGN_ARGON2_PROFILE", "CHEAPEST")

from novalign.annotate import accounts, qc  # noqa: E402
from novalign.annotate.db import make_engine, session_factory  # noqa: E402
from novalign.annotate.exports import consensus_order, normalized_targets  # noqa: E402
from novalign.annotate.interop import (  # noqa: E402
    argilla_records, label_studio_tasks, read_label_studio, read_task_file, route_value,
)
from novalign.annotate.models import User  # noqa: E402
from novalign.annotate.routing import eligible  # noqa: E402
from novalign.cli import app as cli  # noqa: E402
from novalign.data.annotation import AnnotationResult, AnnotationTask  # noqa: E402
from novalign.data.io import DataError  # noqa: E402


def _result(annotator: str, ranking=None, scores=None, task_id: str = "t", **kw) -> AnnotationResult:
    return AnnotationResult(task_id=task_id, annotator=annotator, ranking=ranking, scores=scores or {}, **kw)


def _task(n: int = 3, **kw) -> AnnotationTask:
    return AnnotationTask(task_id="t", prompt="Q?", responses=[{"response_id": f"r{i}", "content": f"answer {i}"}
                                                              for i in range(n)], **kw)


def test_ranking_tau_by_hand():
    """a>b>c vs a>c>b: pairs (a,b) +, (a,c) +, (b,c) -: tau = (2-1)/3 = 1/3. a=b>c vs a>b>c: (a,b) tied on one
    side only, (a,c) and (b,c) concordant: tau-b = 2 / sqrt((3-1)(3-0)) = 2/sqrt(6). All tied: undefined."""
    assert qc.ranking_tau([["a"], ["b"], ["c"]], [["a"], ["c"], ["b"]]) == pytest.approx(1 / 3)
    assert qc.ranking_tau([["a", "b"], ["c"]], [["a"], ["b"], ["c"]]) == pytest.approx(2 / 6 ** 0.5)
    assert qc.ranking_tau([["a", "b", "c"]], [["a"], ["b"], ["c"]]) is None


def test_krippendorff_alpha_by_hand():
    """Two coders, units u1 (1,1), u2 (2,3), u3 (3,3), interval level (delta = difference squared).
    Pooled values 1,1,2,3,3,3 (n=6). D_o = (1/n) * sum_u 1/(m_u-1) * sum_{i!=j} delta = (2*1)/6 = 1/3.
    D_e = sum over ordered pairs of pooled values / (n(n-1)): unordered pairs 1-2: 2*1, 1-3: 6*4, 2-3: 3*1 = 29,
    ordered 58, D_e = 58/30. alpha = 1 - (1/3)/(58/30) = 48/58."""
    rs = [_result("a", scores={"u1": {"helpfulness": 1}, "u2": {"helpfulness": 2}, "u3": {"helpfulness": 3}}),
          _result("b", scores={"u1": {"helpfulness": 1}, "u2": {"helpfulness": 3}, "u3": {"helpfulness": 3}})]
    value = lambda r: {rid: s["helpfulness"] for rid, s in r.scores.items()}  # noqa: E731
    assert qc.alpha(rs, value, level="interval") == pytest.approx(48 / 58)
    assert qc.alpha(rs[:1], value) is None  # one coder: nothing to agree on


def test_normalized_targets_by_hand():
    """A lenient annotator (a: r0 5/5/5, r1 3/5/5) and a strict one (b: r0 4/4/4, r1 2/4/4) mean the same:
    minmax over each one's own scores, helpfulness 1 and 0, fluency and safety one value each (0.5):
    r0 = (1 + .5 + .5)/3 = 2/3, r1 = (0 + .5 + .5)/3 = 1/3 for both, so the means are 2/3 and 1/3. A response
    scored on helpfulness only is counted as partial, not averaged in."""
    full = lambda h, f: {"helpfulness": h, "fluency": f, "safety": f}  # noqa: E731
    rs = [_result("a", scores={"r0": full(5, 5), "r1": full(3, 5)}),
          _result("b", scores={"r0": full(4, 4), "r1": full(2, 4), "r2": {"helpfulness": 1}})]
    targets, partial = normalized_targets(rs)
    assert targets == pytest.approx({("t", "r0"): 2 / 3, ("t", "r1"): 1 / 3}) and partial == 1


def test_consensus_and_gold_stats():
    """Mean ranks: a ranks r0>r1>r2, b ranks r1>r0=r2 -> r0 (1+2)/2 = 1.5, r1 (2+1)/2 = 1.5, r2 (3+2)/2 = 2.5.
    Gold r1>r0>r2 with r0 helpfulness 5: b's tau vs gold = pairs (r0,r1) +, (r1,r2) +, (r0,r2) tied on b's side:
    2/sqrt(2*3); b gave r0 helpfulness 3, MAE 2."""
    task = _task(gold={"ranking": [["r1"], ["r0"], ["r2"]], "scores": {"r0": {"helpfulness": 5}}})
    a = _result("a", [["r0"], ["r1"], ["r2"]])
    b = _result("b", [["r1"], ["r0", "r2"]], scores={"r0": {"helpfulness": 3}})
    assert consensus_order(task, [a, b]) == [1.5, 1.5, 2.5]
    stats = qc.annotator_stats([a, b], {"t": task}, {("t", "b"): "accepted"})
    assert stats["b"]["gold_tau"] == pytest.approx(2 / 6 ** 0.5) and stats["b"]["gold_mae"] == 2
    assert stats["b"]["accepted"] == 1 and stats["a"]["pending"] == 1
    assert stats["a"]["tau_vs_others"] == stats["b"]["tau_vs_others"]


def test_routing_eligibility_and_route_value():
    user = User(username="u", role="annotator", skills=["Math", "Code"])
    assert eligible(user, "Math") and eligible(user, None) and not eligible(user, "KQA")
    assert eligible(User(username="v", role="annotator", skills=["*"]), "KQA")
    task = _task(labels={"ability": ["Code", "Math"], "language": "en"})
    assert route_value(task, "labels.ability") == "Code" and route_value(task, "labels.language") == "en"
    assert route_value(task, "labels.domain") is None


def test_import_forms_and_errors(tmp_path):
    groups = tmp_path / "groups.jsonl"
    groups.write_text(json.dumps({"prompt": "Hi", "system": "Be kind.", "responses": ["a", {"content": "b", "model": "m"}],
                                  "labels": {"ability": "Role"}}) + "\n"
                      + json.dumps({"prompt": "Hi", "responses": [{"text": "no content"}]}) + "\n")
    with pytest.raises(DataError) as err:
        read_task_file(groups)
    assert str(err.value) == f"{groups}:2: field 'responses[0].content': a response needs text content"
    groups.write_text(groups.read_text().splitlines()[0] + "\n")
    (task,), results = read_task_file(groups)
    assert task.task_id == "groups.jsonl:1" and task.messages()[0] == {"role": "system", "content": "Be kind."}
    assert [r.response_id for r in task.responses] == ["r0", "r1"] and task.responses[1].model == "m" and not results
    with pytest.raises(DataError, match=r"ls.json:item 1: field 'responses'"):
        read_label_studio(tmp_path / "ls.json", [{"data": {"prompt": "x", "responses": "nope"}}])


def test_label_studio_round_trip_and_argilla():
    task = _task(2)
    result = _result("ann", [["r1"], ["r0"]], {"r0": {"helpfulness": 2, "fluency": 3, "safety": 5}},
                     spans=[{"response_id": "r0", "start": 0, "end": 6, "kind": "factual", "note": "why"},
                            {"response_id": "r0", "start": 2, "end": 8, "kind": "logical", "note": ""}],
                     edits=[{"response_id": "r0", "new_response_id": "r0-e", "content": "better"}])
    items = label_studio_tasks([(task, [result])])
    tasks, results = read_label_studio("x.json", json.loads(json.dumps(items)))
    assert tasks[0].messages() == task.messages() and tasks[0].responses == task.responses
    back = results[0]
    assert back.annotator == "ls:ann" and back.ranking == result.ranking and back.scores == result.scores
    assert back.spans == result.spans and back.edits == result.edits
    record = argilla_records([(task, [result])])[0]
    assert record["fields"]["response_r0"] == "answer 0"
    assert record["responses"]["ranking"] == [{"value": [{"value": "r1", "rank": 1}, {"value": "r0", "rank": 2}],
                                               "user_id": "ann"}]
    assert record["responses"]["spans_r0"][0]["value"][1] == {"start": 2, "end": 8, "label": "logical"}


def test_cli_migrate_and_create_admin(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    runner = CliRunner()
    for _ in range(2):  # migrating twice is a no-op
        assert runner.invoke(cli, ["annotate", "migrate", "--db", db]).exit_code == 0
    r = runner.invoke(cli, ["annotate", "create-admin", "--db", db], env={"NOVALIGN_ADMIN_PASSWORD": "s3cret-pass"})
    assert r.exit_code == 0, r.output
    again = runner.invoke(cli, ["annotate", "create-admin", "--db", db], env={"NOVALIGN_ADMIN_PASSWORD": "s3cret-pass"})
    assert again.exit_code == 2 and "taken" in again.output
    engine = make_engine(db)
    with session_factory(engine)() as s:
        user = accounts.authenticate(s, "admin", "s3cret-pass")
        assert user is not None and user.role == "admin" and user.password_hash.startswith("$argon2id$")
        assert accounts.authenticate(s, "admin", "wrong") is None and accounts.authenticate(s, "nobody", "x") is None
    engine.dispose()


def test_migration_0002_marks_full_tasks_done(tmp_path):
    """A database made at revision 0001 with one task of k=1 submitted and one not: upgrading to the head adds
    ``tasks.done`` and sets it for the full one only."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from novalign.annotate.db import MIGRATIONS, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, role, skills, active, created_at) "
                          "VALUES (1, 'u', 'annotator', '[]', 1, '2026-01-01')"))
        conn.execute(text("INSERT INTO projects (id, name, overlap, route_field, lease_seconds, created_at) "
                          "VALUES (1, 'p', 1, 'labels.ability', 60, '2026-01-01')"))
        for tid in (1, 2):
            conn.execute(text(f"INSERT INTO tasks (id, project_id, external_id, kind, prompt, labels, meta) "
                              f"VALUES ({tid}, 1, 't{tid}', 'preference', '[]', '{{}}', '{{}}')"))
        conn.execute(text("INSERT INTO assignments (task_id, project_id, slot, user_id, status, leased_at, lease_expires)"
                          " VALUES (1, 1, 1, 1, 'submitted', '2026-01-01', '2026-01-01')"))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, done FROM tasks ORDER BY id")).all() == [(1, 1), (2, 0)]
    engine.dispose()


def test_sqlite_writers_queue_on_a_lock_file(tmp_path):
    """On SQLite a write transaction holds an ``flock`` of ``<db>-writer.lock`` from its BEGIN to its COMMIT or
    ROLLBACK, so a second writer sleeps in the kernel until the first is done (and is woken then, not at SQLite's
    next busy-handler poll); a read transaction (``db.read_only``) takes no lock and cannot write."""
    import fcntl
    import threading

    from sqlalchemy import select, update
    from sqlalchemy.exc import OperationalError

    from novalign.annotate.db import migrate, read_only

    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    migrate(engine)
    fd = os.open(str(tmp_path / "q.db") + "-writer.lock", os.O_RDWR)

    def lock_free() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True

    Session = session_factory(engine)
    with Session() as s:
        s.execute(select(User.id))  # a transaction is a writer unless asked otherwise
        assert not lock_free()
        s.commit()
        assert lock_free()
        read_only(s).execute(select(User.id))
        assert lock_free()
        with pytest.raises(OperationalError, match="readonly"):
            s.execute(update(User).values(active=False))
        s.rollback()
        s.execute(select(User.id))
        s.rollback()
        assert lock_free()
    first, second, order = Session(), Session(), []
    first.execute(select(User.id))
    waiter = threading.Thread(target=lambda: (second.execute(select(User.id)), order.append("second"), second.commit()))
    waiter.start()
    waiter.join(0.3)
    assert order == [] and waiter.is_alive()  # queued behind the first writer
    order.append("first")
    first.commit()
    waiter.join(10)
    assert order == ["first", "second"] and lock_free()
    first.close(), second.close(), os.close(fd), engine.dispose()
