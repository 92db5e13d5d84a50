"""`novalign annotate ...`: the annotation web app (report sections 3.2-3.3)."""

from __future__ import annotations

from pathlib import Path

import typer

from novalign.cli.common import _fail


annotate_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="The annotation app (report 3.2-3.3): ranking, 1-5 scores, error spans, edits, QC.")




_ANNOTATE_DB = typer.Option("sqlite:///runs/annotate.db", "--db", help="sqlite:///path or postgresql://user@host/db")


@annotate_app.command("serve")
def annotate_serve(db: str = _ANNOTATE_DB, host: str = typer.Option("127.0.0.1", help="Interface (loopback default)."),
                   port: int = typer.Option(8765, help="TCP port (0: a free one, printed)."),
                   workers: int = typer.Option(1, min=1, help="Worker processes (state is in the database only).")
                   ) -> None:
    """Migrate the database, then serve the app (prints `novalign annotate: URL`)."""
    from novalign.annotate.server import serve

    serve(db, host, port, echo=lambda *a, **k: typer.echo(*a), workers=workers)


@annotate_app.command("migrate")
def annotate_migrate(db: str = _ANNOTATE_DB) -> None:
    """Bring the database schema to the newest Alembic migration."""
    from novalign.annotate.server import run_migrations

    run_migrations(db)
    typer.echo(f"migrated {db}")


@annotate_app.command("create-admin")
def annotate_create_admin(username: str = typer.Option("admin"), db: str = _ANNOTATE_DB,
                          password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                                       envvar="NOVALIGN_ADMIN_PASSWORD")) -> None:
    """Create an admin account (the first one; admins create the others in the app)."""
    _annotate_user(db, username, password, "admin", "*")


@annotate_app.command("create-user")
def annotate_create_user(username: str, role: str = typer.Option("annotator", help="admin, annotator or reviewer"),
                         skills: str = typer.Option("", help="Taxonomy labels, comma-separated (* = any)."),
                         db: str = _ANNOTATE_DB,
                         password: str = typer.Option(..., prompt=True, hide_input=True, envvar="NOVALIGN_USER_PASSWORD")
                         ) -> None:
    """Create an account from the command line (scripts; the admin page does the same)."""
    _annotate_user(db, username, password, role, skills)


def _annotate_user(db: str, username: str, password: str, role: str, skills: str) -> None:
    from novalign.annotate.accounts import AccountError
    from novalign.annotate.server import add_user

    try:
        add_user(db, username, password, role, skills)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"created {role} {username}")


@annotate_app.command("create-project")
def annotate_create_project(name: str, overlap: int = typer.Option(1, help="k annotators per task."),
                            route_field: str = typer.Option("labels.ability"), lease_seconds: int = 1800,
                            db: str = _ANNOTATE_DB) -> None:
    """Create a project (the admin page does the same)."""
    from novalign.annotate.accounts import AccountError
    from novalign.annotate.server import add_project

    try:
        add_project(db, name, overlap, route_field, lease_seconds)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"created project {name}")


@annotate_app.command("import")
def annotate_import(project: str, path: Path, db: str = _ANNOTATE_DB) -> None:
    """Import tasks: the hand-off JSONL, preference groups JSONL, or a Label Studio JSON export."""
    from novalign.annotate.server import import_tasks
    from novalign.data.io import DataError

    try:
        counts = import_tasks(db, project, path)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"imported {counts['tasks']} tasks and {counts['results']} results into {project}")


@annotate_app.command("export")
def annotate_export(project: str, output: Path, format_: str = typer.Option("rm", "--format",
                    help="rm, trl, sft, results, label-studio or argilla"),
                    normalize: str = typer.Option("minmax", help="Per-annotator score normalization (rm)."),
                    db: str = _ANNOTATE_DB) -> None:
    """Export a project's annotations (rejected submissions left out)."""
    from novalign.annotate.server import export_records

    try:
        summary = export_records(db, project, format_, output, normalize)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"{output}: {summary}")
