"""The constraint library: every validator on hand-written pass / fail cases (tests/constraint_cases.py), the
registry's shape, parameter errors, descriptions that state their own constraint, and the shared reward."""

import pytest

from constraint_cases import CASES
from novalign.eval.ifeval import INSTRUCTIONS
from novalign.flywheel.constraints import (
    REGISTRY, ConstraintError, check, check_all, constraint_reward, describe, expressed, get, instance, matching_types,
)
from novalign.eval.constraints.cfbench_types import lix


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_validator_by_hand(name):
    """Each type: its >= 3 passing cases pass and its >= 3 failing cases fail (reasons in constraint_cases)."""
    params, passes, fails = CASES[name]
    assert len(passes) >= 3 and len(fails) >= 3
    assert [check({"type": name, "params": params}, t) for t in passes] == [True] * len(passes)
    assert [check({"type": name, "params": params}, t) for t in fails] == [False] * len(fails)


def test_the_registry():
    """>= 30 types; every one has cases; IFEval's 25 are its verifier functions themselves (reused, not
    copied); the rest are CFBench-style types IFEval lacks; every type has >= 2 descriptions and a category."""
    assert len(REGISTRY) >= 30 and set(CASES) == set(REGISTRY)
    ifeval = {n for n, t in REGISTRY.items() if t.source == "ifeval"}
    assert ifeval == set(INSTRUCTIONS) and all(REGISTRY[n].validator is INSTRUCTIONS[n] for n in ifeval)
    assert {"style:tone", "situation:audience", "content:example_count", "format:table_shape",
            "structure:section_order", "keywords:banned_phrases", "numeric:number_range"} <= set(REGISTRY) - ifeval
    assert all(len(t.descriptions) >= 2 and t.category for t in REGISTRY.values())


def test_parameter_errors_name_the_type_and_parameter():
    with pytest.raises(ConstraintError, match="unknown constraint type 'format:tabel_shape'.*format:table_shape"):
        get("format:tabel_shape")
    with pytest.raises(ConstraintError, match=r"format:table_shape: missing parameter\(s\) \['num_columns'\]"):
        check({"type": "format:table_shape", "params": {"num_rows": 2}}, "x")
    with pytest.raises(ConstraintError, match="parameter 'tone' must be one of"):
        check({"type": "style:tone", "params": {"tone": "sarcastic"}}, "x")
    with pytest.raises(ConstraintError, match="unexpected parameter"):
        check({"type": "punctuation:no_comma", "params": {"x": 1}}, "x")
    with pytest.raises(ConstraintError, match="must be an integer"):
        instance("format:numbered_list", {"num_items": 2.5})


def test_descriptions_state_their_constraint():
    """Every description of every type, filled with the type's example parameters, is recognised by the type's
    cues and carries the parameter values (what reversal and coverage rely on)."""
    for name, ctype in REGISTRY.items():
        for variant in range(len(ctype.descriptions)):
            text = describe(name, ctype.example, variant)
            assert expressed({"type": name, "params": dict(ctype.example)}, text), (name, text)
            assert name in matching_types(text)


def test_expressed_needs_the_values():
    """'at least 3 bullet points' states 3 bullets, not 4; numbers also as words ('three')."""
    c = {"type": "detectable_format:number_bullet_lists", "params": {"num_bullets": 3}}
    assert expressed(c, "Use three bullet points.") and expressed(c, "Use 3 bullets.")
    assert not expressed(c, "Use 4 bullet points.") and not expressed(c, "Use 3 paragraphs.")


def test_lix_and_reward_by_hand():
    """LIX("The cat is big. It is red."): 7 words, 2 sentences, no word over 6 letters: 3.5. The reward is the
    fraction satisfied: 'a, b' breaks no_comma, keeps 'a' -> 1/2; an empty response satisfies nothing."""
    assert lix("The cat is big. It is red.") == 3.5
    cs = [{"type": "punctuation:no_comma"}, {"type": "keywords:existence", "params": {"keywords": ["a"]}}]
    assert check_all("a, b", cs) == [False, True] and constraint_reward("a, b", cs) == 0.5
    assert constraint_reward("   ", cs) == 0.0 and constraint_reward("x", []) == 0.0


def test_the_rl_reward_reads_the_library():
    """`type: constraints` in the RL reward mix: the fraction of a record's `constraints` each completion
    satisfies -- 'a b' keeps both (1.0), 'a, b' breaks no_comma (0.5); weight 2 doubles them."""
    from novalign.config import RewardComponentConfig
    from novalign.train.rl.inputs import build_reward, required_fields

    comps = [RewardComponentConfig(type="constraints", weight=2.0)]
    assert required_fields(comps) == ("constraints",)
    cs = [{"type": "punctuation:no_comma"}, {"type": "keywords:existence", "params": {"keywords": ["a"]}}]
    prompts = [[{"role": "user", "content": "p"}]] * 2
    assert build_reward(comps)(prompts, ["a b", "a, b"], constraints=[cs, cs]) == [2.0, 1.0]


def test_cli_lists_and_checks(tmp_path):
    """`novalign data constraints` lists every type; with --check it scores {response, constraints} records
    (one passes both constraints, one breaks no_comma: CSR 3/4, ISR 1/2; 2 of the library's types used) and
    names a bad line's field."""
    from typer.testing import CliRunner

    from novalign.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["data", "constraints"])
    assert listed.exit_code == 0 and all(name in listed.output for name in REGISTRY)
    cs = [{"type": "punctuation:no_comma"}, {"type": "keywords:existence", "params": {"keywords": ["a"]}}]
    path = tmp_path / "r.jsonl"
    path.write_text('{"response": "a b", "constraints": %s}\n{"response": "a, b", "constraints": %s}\n'
                    % (__import__("json").dumps(cs), __import__("json").dumps(cs)))
    scored = runner.invoke(app, ["data", "constraints", "--check", str(path)])
    assert scored.exit_code == 0, scored.output
    got = __import__("json").loads(scored.output.strip().splitlines()[-1])
    assert got["constraint_pass_rate"] == 0.75 and got["instruction_pass_rate"] == 0.5
    assert got["types_used"] == 2 and got["type_coverage"] == 2 / len(REGISTRY)
    path.write_text('{"response": "x", "constraints": [{"type": "format:nope"}]}\n')
    bad = runner.invoke(app, ["data", "constraints", "--check", str(path)])
    assert bad.exit_code != 0 and "r.jsonl:1" in bad.output and "constraints[0]" in bad.output
