"""The seeded demo world (novalign.world): determinism, splits, checkers, plain-text base prompts, text data."""

from __future__ import annotations

import json

import pytest

from novalign.config import WorldConfig
from novalign.data.io import DataError
from novalign.world import CAPABILITIES, build_world, passes, score, write_world
from novalign.world.checkers import CheckError, final_answer
from novalign.world.generator import few_shot_prompt, render_plain, task_key

SMALL = WorldConfig(seed=3, num_countries=10, sft_per_capability=30, rl_per_capability=5, eval_per_capability=10,
                    corpus_fact_repeats=2, corpus_worked_examples=20)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def test_same_seed_same_world_other_seed_other_world(world):
    again = build_world(SMALL)
    for part in ("corpus", "sft", "rl", "eval"):
        assert again[part] == world[part]
    other = build_world(SMALL.model_copy(update={"seed": 4}))
    assert other["eval"] != world["eval"]
    assert other["corpus"] != world["corpus"]


def test_sizes_and_every_gold_response_passes_its_checker(world):
    for split, size in (("sft", 30), ("rl", 5), ("eval", 10)):
        assert set(world[split]) == set(CAPABILITIES) | ({"implicit"} if split == "eval" else set())
        for cap in world[split]:
            tasks = world[split][cap]
            assert len(tasks) == size
            # code runs in the sandbox: check all eval code tasks, a few training ones
            for task in tasks if cap != "code" or split == "eval" else tasks[:3]:
                assert task["capability"] == cap
                assert passes(task["response"], task["check"]), (split, task)


def test_eval_prompts_are_held_out(world):
    eval_keys = {task_key(t) for cap in CAPABILITIES for t in world["eval"][cap]}
    assert len(eval_keys) == 10 * len(CAPABILITIES)  # distinct
    for split in ("sft", "rl"):
        for cap in CAPABILITIES:
            assert not eval_keys & {task_key(t) for t in world[split][cap]}
    corpus = "\n".join(world["corpus"])
    for cap in ("math", "reason", "code"):  # the capabilities with worked examples in the corpus
        for t in world["eval"][cap]:
            assert render_plain(t["messages"], t["response"]) not in corpus
    # KQA: eval asks about countries SFT never asks about; their facts are in the corpus
    names = [c.name for c in world["kb"]]
    asked = lambda split: {n for n in names for t in world[split]["kqa"] if n in t["messages"][0]["content"]}  # noqa: E731
    assert asked("eval") and not asked("eval") & asked("sft")
    assert all(f"The capital of {n} is" in corpus for n in asked("eval"))


def test_implicit_tasks_and_pas_data(world):
    """PAS's world: implicit prompts (a seed + a cue sentence) are checked by the constraint the cue implies;
    the PAS data pairs them with that constraint's explicit wording, and gives SFT prompts the abstain answer.
    SMALL: pas_prompts 300 (default), pas_abstain_per_capability 40 > 30 SFT tasks -> 30 per capability."""
    from novalign.world.implicit import ABSTAIN, CUES
    from novalign.world.tasks import CONSTRAINTS

    cues = {cue: name for name, sentences in CUES.items() for cue in sentences}
    pas = world["pas"]
    implicit = [r for r in pas if r["capability"] == "implicit"]
    assert len(implicit) == 300 and len(pas) == 300 + 30 * len(CAPABILITIES)
    for r in implicit:
        (cue,) = [c for c in cues if r["prompt"].endswith(" " + c)]
        assert r["complement"] == CONSTRAINTS[cues[cue]][0]  # the constraint's own instruction
    assert all(r["complement"] == ABSTAIN for r in pas if r["capability"] != "implicit")
    held_out = {t["messages"][-1]["content"] for t in world["eval"]["implicit"]}
    assert len(held_out) == 10 and not held_out & {r["prompt"] for r in implicit}
    for t in world["eval"]["implicit"]:
        (cue,) = [c for c in cues if t["messages"][-1]["content"].endswith(" " + c)]
        assert t["check"]["instruction_id_list"] == [CONSTRAINTS[cues[cue]][1]]
        assert not passes(t["response"].swapcase() if cues[cue] in ("capital", "lower") else "plain words", t["check"])
    # the aligned model is never taught a cue: no cue sentence in SFT, RL or the corpus
    texts = [m["content"] for split in ("sft", "rl") for ts in world[split].values() for t in ts for m in t["messages"]]
    assert not any(c in text for c in cues for text in texts + world["corpus"])


def test_corpus_has_no_chat_markers(world):
    text = "\n".join(world["corpus"])
    assert "<|im_start|>" not in text and "<|im_end|>" not in text
    assert "System:" not in text  # system-role behaviour is for alignment to teach


def test_wrong_responses_fail():
    """Hand-made specs: a reply that breaks exactly one requirement fails (score < 1)."""
    answer = {"type": "answer", "answer": "7"}
    assert passes("3 + 4 = 7. The answer is 7.", answer)
    assert not passes("3 + 4 = 8. The answer is 8.", answer)
    assert not passes("The answer is 17.", answer)
    ifeval = {"type": "ifeval", "instruction_id_list": ["change_case:english_capital", "keywords:existence"],
              "kwargs": [{}, {"keywords": ["river"]}]}
    assert passes("CATS ARE SMALL ANIMALS THAT SLEEP A LOT. RIVER IS MY WORD.", ifeval)
    # right case, keyword missing: 1 of 2 instructions followed
    assert score("CATS ARE SMALL ANIMALS THAT SLEEP A LOT AND LIKE WARM PLACES.", ifeval) == 0.5
    role = {"type": "role", "rules": [{"kind": "starts_with", "text": "Chef says:"},
                                      {"kind": "lowercase", "after": "Chef says:"}]}
    assert passes("Chef says: the soup is ready.", role)
    assert score("Chef says: The soup is ready.", role) == 0.5
    assert score("the soup is ready.", role) == 0.5
    code = {"type": "code", "tests": "assert add(2, 3) == 5"}
    assert passes("def add(a, b):\n    return a + b", code)
    assert passes("```python\ndef add(a, b):\n    return a + b\n```", code)
    assert not passes("def add(a, b):\n    return a - b", code)
    assert not passes("def add(a, b)\n    return a + b", code)  # syntax error


def test_final_answer_takes_the_first_stated_answer():
    """A base model runs on: 'The answer is Monday. The answer is Tuesday.' is graded on 'Monday'."""
    assert final_answer("The answer is Monday. The answer is Tuesday. The answer is") == "Monday"
    assert final_answer("41 + 2 = 43. The answer is 43.") == "43"
    assert final_answer("no marker") == "no marker"


def test_bad_specs_are_errors():
    with pytest.raises(CheckError, match="unknown check type"):
        score("x", {"type": "nope"})
    with pytest.raises(CheckError, match="needs 'answer'"):
        score("x", {"type": "answer"})


def test_few_shot_prompt_format():
    shot = {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "response": "1 + 1 = 2. The answer is 2."}
    task = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 2?"}]}
    assert few_shot_prompt(task, [shot]) == (
        "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2. The answer is 2.\n\n"
        "System: Be brief.\nQuestion: Hi?\nAnswer: Hello.\nQuestion: What is 2 + 2?\nAnswer:"
    )


def test_write_world_files(world, tmp_path):
    files = write_world(world, tmp_path)
    sft = [json.loads(line) for line in open(files["sft"])]
    assert len(sft) == 30 * len(CAPABILITIES)
    assert sft[0]["messages"][-1]["role"] == "assistant"
    rl = [json.loads(line) for line in open(files["rl_prompts"])]
    assert rl[0]["messages"][-1]["role"] == "user" and "check" in rl[0] and "response" not in rl[0]
    assert all("text" in json.loads(line) for line in open(files["corpus"]))
    pas = [json.loads(line) for line in open(files["pas"])]
    assert pas == world["pas"] and set(pas[0]) == {"prompt", "complement", "capability"}


# ------------------------------------------------------------------------------------ plain-text data


def test_split_document_by_hand():
    """ids [1..5], max_length 2 -> [1,2], [3,4]; the lone [5] has nothing to predict and is dropped."""
    from novalign.data.text import split_document

    pieces = split_document([1, 2, 3, 4, 5], 2)
    assert [p.input_ids for p in pieces] == [[1, 2], [3, 4]]
    assert all(p.labels == p.input_ids for p in pieces)


def test_load_text_dataset_appends_end_of_text_and_names_bad_lines(tmp_path, tiny_model_dir):
    from novalign.data.text import end_of_text_id, load_text_dataset
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"text": "The capital of Kalo is Mi."}) + "\n")
    samples, report = load_text_dataset([good], tok, max_length=4096)
    ids = tok("The capital of Kalo is Mi.", add_special_tokens=False)["input_ids"] + [end_of_text_id(tok)]
    assert [s.input_ids for s in samples] == [ids] and report.total == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*2.*text"):
        load_text_dataset([bad], tok, max_length=64)
    samples, report = load_text_dataset([bad], tok, max_length=64, skip_invalid=True)
    assert len(samples) == 1 and report.total == 1


def test_sft_on_text_files_learns_the_corpus(tmp_path, tiny_model_dir):
    """`novalign sft` with only data.text_files (pretraining): every token is trained and the loss falls."""
    from novalign.config import SFTConfig
    from novalign.train.sft import run_sft

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"The capital of Kalo{i} is Mi{i}."}) + "\n" for i in range(8)))
    cfg = SFTConfig.model_validate({
        "output_dir": str(tmp_path / "pt"), "model": {"path": str(tiny_model_dir)},
        "data": {"text_files": [str(corpus)], "max_length": 64},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"max_steps": 15, "micro_batch_size": 4, "grad_accum": 1, "progress": False, "tensorboard": False},
    })
    result = run_sft(cfg, console_print=lambda *_: None)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "pt" / "metrics.jsonl") if '"loss"' in line]
    assert result.state.step == 15
    assert losses[-1] < 0.5 * losses[0]
    assert (tmp_path / "pt" / "model" / "config.json").is_file()
