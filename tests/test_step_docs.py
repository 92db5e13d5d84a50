"""The pipeline's list of step types comes from the step registry, so it cannot go stale."""

from __future__ import annotations


def test_every_registered_step_type_is_described_and_printed():
    """describe_step_types has one row per registered type, sorted, each naming its config class and a
    summary (the newer steps among them: llm_label and classify of the prompt labels, select_diverse of
    selection, respond of the preference data, revise of craft, style of control, textbook of the IF data);
    `novalign data run --help-config` prints every type; StepSpec.type's description names none by hand."""
    from typer.testing import CliRunner

    from novalign.cli import app
    from novalign.config.pipeline import StepSpec
    from novalign.flywheel.steps import STEP_TYPES, describe_step_types

    rows = describe_step_types()
    assert [r[0] for r in rows] == sorted(STEP_TYPES)
    assert {"llm_label", "classify", "select_diverse", "respond", "revise", "style", "textbook"} <= set(STEP_TYPES)
    assert all(where.endswith("." + STEP_TYPES[t].Config.__name__) and summary for t, where, summary in rows)
    assert dict((t, s) for t, _, s in rows)["label_vote"] == ("Aggregate the votes per dimension (majority or "
                                                               "Dawid-Skene), with a confidence per label.")
    out = CliRunner().invoke(app, ["data", "run", "--help-config"], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    table = out.output.split("Step types")[1].split("options (YAML keys")[0]  # the first table only
    printed = {line.split("│")[1].strip() for line in table.splitlines() if line.count("│") == 4}
    assert set(STEP_TYPES) <= printed
    assert not any(t in StepSpec.model_fields["type"].description for t in ("exact_dedup", "llm_generate"))
