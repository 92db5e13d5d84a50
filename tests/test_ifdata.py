"""Instruction-following data: attribute detection, the expansion and reversal loops (they terminate within their
round bound and count every drop), textbook parsing, and system-message decomposition + assembly as flywheel
steps over real HTTP -- against a scripted stand-in for an external model and against `novalign serve`.

The in-process loop tests pass plain functions as the models: simulated external LLMs (tests/ifdata_llms.py and
the small ones below), documented stand-ins, never novalign components."""

import json

import yaml

from cli_server import health, served
from ifdata_llms import inspector, writer
from novalign.flywheel.constraints import check
from novalign.flywheel.constraints.attributes import coverage, detect_attributes
from novalign.flywheel.constraints.expansion import conflicts, expand
from novalign.flywheel.constraints.reversal import reverse
from novalign.flywheel.constraints.textbook import parse_lesson
from scripted_llm import ScriptedLLM


def _ask(fn, calls=None):
    def ask(conversations):
        if calls is not None:
            calls.append(len(conversations))
        return [fn(c) for c in conversations]
    return ask


def test_detect_attributes_by_hand():
    """'<<Fruit>>\\n* apple\\n* pear\\nP.S. yum': 6 \\w+ words (under 10: no word-count attribute), 2 bullets, a
    title, a postscript; 'yum' has no '!' so no enthusiastic tone; it has capitals so no lowercase. Every
    attribute validates on the text."""
    text = "<<Fruit>>\n* apple\n* pear\nP.S. yum"
    found = detect_attributes(text)
    assert [a["type"] for a in found] == ["detectable_format:number_bullet_lists", "detectable_format:title",
                                          "detectable_content:postscript", "startend:quotation"][:3]
    assert found[0]["params"] == {"num_bullets": 2} and all(check(a, text) for a in found)


def test_coverage_by_hand():
    """3 constraint sentences; 'Use a metaphor.' matches no type's cue: coverage 2/3, the miss listed."""
    got = coverage(["Answer in fewer than 50 words.", "Use a metaphor.", "Format it as a markdown table."])
    assert got["expressible"] == 2 and abs(got["coverage"] - 2 / 3) < 1e-12 and got["not_expressible"] == ["Use a metaphor."]


def _proposer_a(messages):
    """Proposes no_comma (valid), an unknown type, bad params, and english_lowercase; a duplicate of no_comma."""
    return json.dumps({"constraints": [
        {"type": "punctuation:no_comma", "params": {}, "text": "Do not use any commas."},
        {"type": "format:haiku", "params": {}},
        {"type": "format:numbered_list", "params": {"num_items": "three"}},
        {"type": "punctuation:no_comma", "params": {}},
        {"type": "change_case:english_lowercase", "params": {}},
    ]})


def _proposer_b(messages):
    """Proposes english_capital: it contradicts english_lowercase, which proposer A already gave."""
    if "talk" in messages[-1]["content"]:
        return "I cannot answer in JSON, sorry."  # unparsable
    return json.dumps({"constraints": [{"type": "change_case:english_capital", "params": {}}]})


def _judge(messages):
    """Accepts the first constraint of the checklist, rejects the second."""
    return json.dumps({"results": {"1": "yes", "2": "no"}})


def test_expansion_terminates_and_counts_drops():
    """Three prompts, max_rounds 3, max_new 2:

    * 'tell me about cats' (quality 9) with a lowercase, comma-free response: proposer A's screening keeps
      no_comma and english_lowercase (unknown type 1, bad params 1, duplicate 1); proposer B's english_capital
      contradicts english_lowercase (1). The judge keeps no_comma, rejects lowercase. The response passes
      no_comma: kept in round 1 with one constraint.
    * 'talk, please' (quality 9), response 'a, b' has a comma: each round proposer B is unparsable, the
      judge keeps no_comma and the response fails it -- 3 rounds, then dropped: 'response fails a constraint
      after 3 rounds'. Proposers are asked 3 times for it, no more.
    * a prompt with labels.quality 2 < min_quality 5: dropped 'below min quality', never asked.
    """
    records = [{"_id": "1", "prompt": "tell me about cats", "response": "cats are small animals",
                "labels": {"quality": 9, "constraints": "unconstrained"}},
               {"_id": "2", "prompt": "talk, please", "response": "a, b", "labels": {"quality": 9}},
               {"_id": "3", "prompt": "low", "response": "x", "labels": {"quality": 2}}]
    calls = []
    res = expand(records, {"a": _ask(_proposer_a, calls), "b": _ask(_proposer_b)}, _ask(_judge),
                 quality_field="labels.quality", min_quality=5, max_rounds=3, max_new=2)
    assert [r["_id"] for r in res.kept] == ["1"]
    kept = res.kept[0]
    assert [c["type"] for c in kept["constraints"]] == ["punctuation:no_comma"]
    assert kept["prompt"] == "tell me about cats Do not use any commas." and kept["expansion"]["round"] == 1
    assert kept["labels"] == {"quality": 9, "constraints": "simple"}  # the taxonomy's level, 1 constraint
    assert kept["expansion"]["rejected"] == {"bad params": 1, "contradiction": 1, "duplicate type": 1,
                                             "judge rejected": 1, "unknown type": 1}
    assert [(r["_id"], why) for r, why in res.dropped] == [("3", "below min quality"),
                                                           ("2", "response fails a constraint after 3 rounds")]
    assert calls == [2, 1, 1]  # round 1: both prompts; rounds 2 and 3: only the pending one
    assert res.per_record[1]["unparsable proposal"] == 3 and res.per_record[1]["response fails a constraint"] == 3
    assert conflicts([{"type": "change_case:english_capital"}, {"type": "change_case:english_lowercase"}])


def _planted():
    return ("<<Rivers>>\n# Overview\nRivers carry water to the sea. For example, the Rhine flows north.\n"
            "# Details\n* The Danube is long\n* The Seine is short\n| River | Km |\n| --- | --- |\n| Rhine | 1230 |\n"
            "P.S. Rivers are wonderful!")


def test_reversal_reaches_full_recall_within_the_bound():
    """The stand-in writer states ~60 % of the attributes in round 1 and ~85 % of the missing ones per revision;
    the loop stops as soon as every detected attribute is stated (recall 1.0), at most 3 rounds; recall never
    falls from one round to the next; the inspector (a stand-in) scores the final prompt 9."""
    res = reverse([{"_id": "t", "text": _planted()}], _ask(writer), _ask(inspector), max_rounds=3)
    assert len(res.kept) == 1 and not res.dropped
    rec = res.kept[0]
    recall = rec["reversal"]["recall"]
    assert recall[-1] == 1.0 and len(recall) <= 3 and recall == sorted(recall)
    assert rec["response"] == _planted() and rec["reversal"]["inspector_score"] == 9
    assert {c["type"] for c in rec["constraints"]} >= {"detectable_format:title", "format:table_shape",
                                                       "structure:section_order", "detectable_content:postscript"}


def test_reversal_is_bounded_and_counts_failures():
    """A writer that never states an attribute and an inspector that answers garbage: exactly 3 writer calls
    (one per round), 3 'inspector failed', the text dropped as 'attributes missing after 3 rounds'; a text with
    no detectable attribute ('ok') is dropped without a call."""
    calls = []
    res = reverse([{"_id": "t", "text": _planted()}, {"_id": "u", "text": "ok"}],
                  _ask(lambda m: "Write something.", calls), _ask(lambda m: "no json"), max_rounds=3)
    assert calls == [1, 1, 1] and res.counts["inspector failed"] == 3 and not res.kept
    assert sorted(why for _, why in res.dropped) == ["attributes missing after 3 rounds", "no detectable attributes"]


def test_textbook_lesson_parsing():
    """Sections must all be there in order; the answer section must meet the constraints (no comma here)."""
    sections = ["Intent", "Reasoning", "Answer"]
    good = "## Intent\nwants a list\n## Reasoning\nthink\n## Answer\napples and pears"
    cons = [{"type": "punctuation:no_comma", "params": {}}]
    assert parse_lesson(good, sections, cons) == ({"Intent": "wants a list", "Reasoning": "think",
                                                   "Answer": "apples and pears"}, None)
    assert parse_lesson(good.replace("apples and", "apples, and"), sections, cons)[1] == "answer fails a constraint"
    assert parse_lesson("## Intent\nx\n## Answer\ny", sections, cons)[1] == "missing section Reasoning"


SYSTEMS = ["You are a travel agent. Plan trips for users.", "You are a math tutor. Explain each step."]


def _decompose(route, messages):
    """Stand-in decomposer: task = the message's second sentence, opening = its first, one shared rule."""
    text = messages[-1]["content"].split("System message:\n", 1)[1].split("\n\n", 1)[0]
    opening, task = [s.strip() + "." for s in text.split(".")[:2]]
    return json.dumps({"opening": opening, "task": task, "constraints": ["Be polite."], "workflow": ["Ask", "Answer"]})


def _refiner(route, messages):
    content = messages[-1]["content"]
    if "Rating: [[N]]" in content:
        return "Coherent. Rating: [[8]]"
    return content.split("System message:\n", 1)[1].rsplit("\n\nReply with only", 1)[0] + "\nStay on topic."


def _pipeline(tmp_path, steps, sources, llm_url):
    cfg = {"run_dir": str(tmp_path / "run"), "progress": False, "sources": sources, "steps": steps,
           "llm": {"backend": "openai", "base_url": llm_url, "model": "m", "api_key": "k", "max_attempts": 1,
                   "timeout_s": 60, "progress": False}}
    from novalign.config.pipeline import PipelineConfig
    from novalign.flywheel.pipeline import Pipeline

    return Pipeline.from_config(PipelineConfig.model_validate(cfg)).run()


def test_sysmsg_round_trip_over_http(tmp_path):
    """Decompose 2 system messages (scripted stand-in over HTTP), deduplicate the pool with the engine's
    exact_dedup (the shared 'Be polite.' rule and 'Ask, Answer' workflow appear once, not twice: 2 x 4
    components -> 6), then assemble a
    system message for a constraint-rich prompt from that pool, evolve and rationalize it (each pass appends
    'Stay on topic.' and keeps the constraint, so it is applied), filter (rated 8 >= 6). The assembled message
    holds an opening and a task from the decomposed messages and states the prompt's constraint."""
    llm = ScriptedLLM(lambda route, m: _decompose(route, m) if "Split this system" in m[-1]["content"] else _refiner(route, m))
    try:
        (tmp_path / "sys.jsonl").write_text("".join(json.dumps({"system": s}) + "\n" for s in SYSTEMS))
        pool = _pipeline(tmp_path, [{"name": "decompose", "type": "sysmsg_decompose"},
                                    {"name": "dedup", "type": "exact_dedup", "config": {"field": "text"}}],
                         {"sys": {"path": str(tmp_path / "sys.jsonl")}}, llm.base_url("a"))
        components = pool.records("dedup")
        assert len(components) == 6 and [c["text"] for c in components].count("Be polite.") == 1
        assert pool.steps[0]["requests"] == 2 and len(llm.bodies["a"]) == 2
        constraint = {"type": "punctuation:no_comma", "params": {}, "text": "Do not use any commas."}
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Plan a day in Rome.", "constraints": [constraint]}) + "\n")
        out = _pipeline(tmp_path, [{"name": "assemble", "type": "sysmsg_assemble",
                                    "config": {"components": str(pool.outputs["dedup"]), "extra_rules": 1}}],
                        {"p": {"path": str(tmp_path / "p.jsonl")}}, llm.base_url("a"))
        [rec] = out.records("assemble")
        openings = {c["text"] for c in components if c["kind"] == "opening"}
        assert any(rec["system"].startswith(o) for o in openings) and "# Task" in rec["system"]
        assert "Do not use any commas." in rec["system"] and rec["system"].count("Stay on topic.") == 2
        assert rec["messages"][0] == {"role": "system", "content": rec["system"]}
    finally:
        llm.close()


NO_COMMA = {"type": "punctuation:no_comma", "params": {}, "text": "Do not use any commas."}
# What the served model is taught to say: a decomposition of each of SYSTEMS (they share the rule 'Be polite.'),
# then for the prompt 'rome' an evolution and a rationalization that each add a rule, and an 8 from the filter.
DECOMPOSED = [{"opening": "You are a travel agent.", "task": "Plan trips for users.", "constraints": ["Be polite."]},
              {"opening": "You are a math tutor.", "task": "Explain each step.", "constraints": ["Be polite."]}]
POOL = [("opening", "You are a travel agent."), ("task", "Plan trips for users."), ("constraints", "Be polite."),
        ("opening", "You are a math tutor."), ("task", "Explain each step.")]  # after exact_dedup, in order
FILTER_REPLY = "Coherent and possible to follow. Rating: [[8]]"


def _sysmsg_script():
    """(pairs to memorize, draft, evolved, rationalized): every prompt made by the steps' own renderers
    (decompose_messages, draft, pass_messages, filter_messages) and the bundled templates they load."""
    from novalign.eval.judge import load_template
    from novalign.flywheel.constraints.sysmsg import (PASS_TEMPLATES, decompose_messages, draft, filter_messages,
                                                      pass_messages, pools_of)

    template = load_template("ifdata_decompose")
    pairs = [(decompose_messages(s, template), json.dumps(d)) for s, d in zip(SYSTEMS, DECOMPOSED)]
    drafted = draft(pools_of([{"kind": k, "text": t} for k, t in POOL]), [NO_COMMA], 0, "rome", 1)
    evolved, rationalized = drafted + "\n- Stay on topic.", drafted + "\n- Stay on topic.\n- Answer in English."
    pairs += [(pass_messages(load_template(PASS_TEMPLATES["evolution"]), drafted, [NO_COMMA]), evolved),
              (pass_messages(load_template(PASS_TEMPLATES["rationalization"]), evolved, [NO_COMMA]), rationalized),
              (filter_messages(load_template("ifdata_sysfilter"), rationalized), FILTER_REPLY)]
    return pairs, drafted, evolved, rationalized


def test_sysmsg_steps_against_novalign_serve(memorized_model, tmp_path):
    """The round trip against a real `novalign serve` over HTTP. The served tiny model was trained (our SFT) to
    answer exactly the prompts these steps render (tests/memorized_model.py):

    * sysmsg_decompose: 2 system messages -> 2 JSON replies, parsed into 3 components each (opening, task,
      one rule) = 6 records; exact_dedup on text keeps 'Be polite.' once -> the 5 of POOL, in order.
    * sysmsg_assemble for prompt 'rome' (no_comma) from that pool file: the draft is one opening, one task and
      the rules '- Be polite.' (the only pool rule, extra_rules 1) and '- Do not use any commas.'; the
      evolution reply adds 'Stay on topic.' and the rationalization 'Answer in English.', both still state the
      no_comma constraint, so both are applied; the filter reply's 'Rating: [[8]]' parses to 8 >= 6: kept.
    * The server answered 2 + 3 = 5 chat requests, as its /health counts them."""
    pairs, drafted, evolved, rationalized = _sysmsg_script()
    model_dir = memorized_model(pairs)
    with served(model_dir, "--set", "engine.max_batch_size=8", name="m",
                env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}) as url:
        (tmp_path / "sys.jsonl").write_text("".join(json.dumps({"system": s}) + "\n" for s in SYSTEMS))
        (tmp_path / "p.jsonl").write_text(json.dumps({"id": "rome", "prompt": "Plan a day in Rome.",
                                                      "constraints": [NO_COMMA]}) + "\n")
        pool = _pipeline(tmp_path, [{"name": "decompose", "type": "sysmsg_decompose", "config": {"max_tokens": 128}},
                                    {"name": "dedup", "type": "exact_dedup", "config": {"field": "text"}}],
                         {"sys": {"path": str(tmp_path / "sys.jsonl")}}, url)
        assert len(pool.records("decompose")) == 6 and pool.steps[0]["dropped_by_reason"] == {}
        assert [(c["kind"], c["text"]) for c in pool.records("dedup")] == POOL
        out = _pipeline(tmp_path, [{"name": "assemble", "type": "sysmsg_assemble", "config": {
            "components": str(pool.outputs["dedup"]), "temperature": 0.0, "max_tokens": 128}}],
            {"p": {"path": str(tmp_path / "p.jsonl"), "id_field": "id"}}, url)
        [rec] = out.records("assemble")
        assert rec["draft"] == drafted and drafted.endswith("# Rules\n- Be polite.\n- Do not use any commas.")
        assert any(drafted.startswith(o) for k, o in POOL if k == "opening") and "\n\n# Task\n" in drafted
        assert rec["system"] == rationalized and rationalized.startswith(evolved)
        assert rec["messages"] == [{"role": "system", "content": rationalized},
                                   {"role": "user", "content": "Plan a day in Rome."}]
        assert out.steps[0]["dropped_by_reason"] == {} and out.steps[0]["requests"] == 3
        assert health(url)["requests"] == 5


def _roles(route, messages):
    """Stand-ins by route: a proposer (no_comma), a judge (checklist yes / inspector JSON), a responder, a
    prompt writer that states every listed property, and a teacher whose answer has no comma."""
    content = messages[-1]["content"]
    if route == "prop":
        return json.dumps({"constraints": [{"type": "punctuation:no_comma", "params": {}}]})
    if route == "judge":
        if "Properties of the text" in content:
            return json.dumps({"score": 8, "missing": []})
        return json.dumps({"results": {"1": "yes"}})
    if route == "writer":
        return "Write about rivers. " + " ".join(line.split("] ", 1)[1] for line in content.splitlines()
                                                 if line.startswith("[a"))
    if route == "teacher":
        return "## Intent\nfacts\n## Reasoning\nrecall\n## Pitfalls\ncommas\n## Constraints\nnone\n## Answer\ncats sleep a lot"
    return "cats are small animals"


def test_the_data_steps_through_the_pipeline(tmp_path):
    """constraint_expand, response_reverse and textbook as pipeline steps over HTTP (stand-ins by route): one
    prompt gains no_comma and keeps the responder's comma-free reply; one text is reversed in 1 round (the
    writer states every property); the lesson's answer passes no_comma. Usage is counted per step."""
    llm = ScriptedLLM(_roles)
    try:
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Tell me about cats."}) + "\n")
        (tmp_path / "t.jsonl").write_text(json.dumps({"text": "<<Rivers>>\n* long\n* wide\nP.S. bye"}) + "\n")
        url = llm.base_url
        steps = [
            {"name": "expand", "type": "constraint_expand", "input": "p", "config": {
                "proposers": [{"name": "a", "llm": {"base_url": url("prop")}}], "judge": {"base_url": url("judge")},
                "responder": {"base_url": url("resp")}}},
            {"name": "lessons", "type": "textbook", "input": "expand", "config": {"llm": {"base_url": url("teacher")}}},
            {"name": "reverse", "type": "response_reverse", "input": "t", "config": {
                "writer": {"base_url": url("writer")}, "inspector": {"base_url": url("judge")}}},
        ]
        out = _pipeline(tmp_path, steps, {"p": {"path": str(tmp_path / "p.jsonl")}, "t": {"path": str(tmp_path / "t.jsonl")}},
                        url("unused"))
        [exp] = out.records("expand")
        assert exp["prompt"].startswith("Tell me about cats. ") and exp["response"] == "cats are small animals"
        assert [c["type"] for c in exp["constraints"]] == ["punctuation:no_comma"]
        [lesson] = out.records("lessons")
        assert lesson["response"].endswith("## Answer\ncats sleep a lot")
        [rev] = out.records("reverse")
        assert rev["reversal"]["recall"] == [1.0] and rev["response"].startswith("<<Rivers>>")
        assert [s["requests"] for s in out.steps] == [3, 1, 2] and "unused" not in llm.bodies
    finally:
        llm.close()


def test_textbook_templates_are_editable(tmp_path):
    """A user's textbook.en.txt in template_dir replaces the bundled one, its own '## ' headings become the
    required sections (the last is the answer); a template with fewer than two sections is refused."""
    import pytest

    from novalign.flywheel.constraints.textbook import load_lesson_template, required_sections

    assert required_sections(load_lesson_template()) == ["Intent", "Reasoning", "Pitfalls", "Constraints", "Answer"]
    (tmp_path / "textbook.en.txt").write_text("Teach {prompt} ({constraints})\n## Why\n## Solution\n")
    assert required_sections(load_lesson_template("textbook", str(tmp_path))) == ["Why", "Solution"]
    (tmp_path / "bad.en.txt").write_text("Just answer {prompt}.\n## Answer\n")
    with pytest.raises(ValueError, match="at least two"):
        load_lesson_template("bad", str(tmp_path))
