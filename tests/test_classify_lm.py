"""The LM prompt classifier (novalign.flywheel.classify_lm): reply parsing and confidence by hand, a learning
test, the saved folder's manifest round trip and its errors, failed replies counted, and the CLI."""

from __future__ import annotations

import json
import random

import pytest

from novalign.data.io import write_jsonl
from novalign.flywheel.classify_lm import (MANIFEST, LMClassifier, LMClassifierConfig, _value_confidence, label_json,
                                           load_any_classifier, load_lm_classifier, parse_reply, train_lm_classifier)
from novalign.flywheel.taxonomy import load_taxonomy

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
        "vocab_size": 400, "max_length": 256, "steps": 80, "lr": 1e-2, "batch_size": 16}

# Three abilities, each told apart by its wording alone; the fillers vary, so held-out prompts are new texts.
_TEMPLATES = {
    "Math": ["What is {a} plus {b}?", "Compute {a} times {b}.", "Solve x + {a} = {b} for x."],
    "Code": ["Write a Python function named {w} that sorts a list.", "Fix this code: def {w}(): return {a}",
             "Implement {w} in C++ with a loop."],
    "Creation": ["Write a short poem about the {w}.", "Compose a story where a {w} travels far.",
                 "Write a song about a {w} at night."],
}
_WORDS = ["sea", "river", "lamp", "forest", "train", "garden", "mountain", "cloud", "window", "bridge"]


def _pool(n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for ability, templates in _TEMPLATES.items():
        for i in range(n_per_class):
            t = templates[i % len(templates)]
            out.append((t.format(a=rng.randint(2, 99), b=rng.randint(2, 99), w=rng.choice(_WORDS)), ability))
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One LM classifier trained on 36 prompts (ability only), saved; the held-out prompts beside it."""
    out = tmp_path_factory.mktemp("lmclf") / "clf"
    train, test = _pool(12, seed=0), _pool(4, seed=1)
    clf = train_lm_classifier([t for t, _ in train], {"ability": [a for _, a in train]}, out,
                              config=LMClassifierConfig(**TINY))
    return clf, out, test


def test_label_json_and_parse_reply_by_hand():
    """label_json writes the dimensions asked, in that order, compactly; parse_reply is llm_label's parse:
    '{"ability":"Math","language":"xx"}' -> ability Math, language None ('xx' is no leaf, named); text with
    no JSON -> every dimension None with one 'parse:' problem; a fenced block is found as extract_json finds it."""
    tax = load_taxonomy()
    assert label_json({"language": "en", "ability": "Math", "domain": "IT"}, ["ability", "language"]) == \
        '{"ability":"Math","language":"en"}'
    labels, problems = parse_reply('{"ability":"Math","language":"xx"}', tax, ["ability", "language"])
    assert labels == {"ability": "Math", "language": None} and problems == ["language: 'xx' is no leaf"]
    labels, problems = parse_reply("maths, I think", tax, ["ability", "language"])
    assert labels == {"ability": None, "language": None} and len(problems) == 1 and problems[0].startswith("parse:")
    assert parse_reply('ok ```json\n{"ability":"Code"}\n```', tax, ["ability"]) == ({"ability": "Code"}, [])


class _Pieces:
    """A tokenizer whose token j is the string pieces[j] (only decode is used by _value_confidence)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_value_confidence_by_hand():
    """Tokens '{"a":"' (p 0.9), 'Ma' (0.5), 'th' (0.8), '"}' (1.0), labels {a: Math}: the value 'Math' is
    characters 6-10, overlapped by tokens 1 and 2 -> 0.5 * 0.8 = 0.4. A label not found as "a":"value" in
    the reply (it came from elsewhere) gets 0."""
    tok = _Pieces(['{"a":"', "Ma", "th", '"}'])
    assert _value_confidence(tok, [0, 1, 2, 3], [0.9, 0.5, 0.8, 1.0], {"a": "Math", "b": None}) == {"a": 0.4}
    assert _value_confidence(tok, [0, 1, 2, 3], [0.9, 0.5, 0.8, 1.0], {"a": "Code"}) == {"a": 0.0}


def test_lm_classifier_learns_and_untrained_is_below_chance(trained, tmp_path):
    """After 80 steps on 36 prompts the classifier labels >= 10 of the 12 held-out prompts right (chance:
    1/3); the untrained model (same tokenizer and architecture, random weights) writes no usable label JSON:
    every reply is counted as failed, none guessed, accuracy 0."""
    from novalign.models.load import load_model, load_tokenizer
    from novalign.models.tiny import init_tiny_model

    clf, _, test = trained
    pred = clf.predict_detailed([t for t, _ in test])
    right = sum(p["ability"] == a for p, (_, a) in zip(pred.labels, test))
    assert right >= 10, (right, pred.replies)
    assert all(0 < c["ability"] <= 1 for c, p in zip(pred.confidence, pred.labels) if p["ability"])
    base = init_tiny_model(tmp_path / "base", texts=[t for t, _ in test] * 2, vocab_size=400, hidden_size=32,
                           num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_position_embeddings=256)
    untrained = LMClassifier(load_model(base), load_tokenizer(base), ["ability"], load_taxonomy(), clf.instruction,
                             clf.max_new_tokens)
    upred = untrained.predict_detailed([t for t, _ in test])
    assert sum(p["ability"] == a for p, (_, a) in zip(upred.labels, test)) <= len(test) / 3
    f = upred.failures()
    assert f["replies"] == 12 and f["unlabeled_cells"] == 12 - sum(p["ability"] is not None for p in upred.labels)
    assert untrained.predict([t for t, _ in test]) == [{"ability": (p["ability"], c["ability"])} if p["ability"]
                                                      else {} for p, c in zip(upred.labels, upred.confidence)]


def test_saved_folder_round_trip_and_errors(trained, tmp_path):
    """The folder loads as a plain Hugging Face model and back as the same classifier (same replies); a
    missing folder, a model folder without the manifest, a manifest without a field and a taxonomy with
    another digest are errors naming the folder / the manifest file and field."""
    from transformers import AutoModelForCausalLM

    clf, folder, test = trained
    assert AutoModelForCausalLM.from_pretrained(folder).config.hidden_size == 32
    info = json.loads((folder / MANIFEST).read_text())
    assert info["kind"] == "lm" and info["dims"] == ["ability"] and info["train_records"] == 36
    assert info["taxonomy_digest"] == load_taxonomy().digest and info["config"]["steps"] == 80
    again = load_any_classifier(folder)
    texts = [t for t, _ in test]
    assert isinstance(again, LMClassifier) and again.predict_detailed(texts).replies == clf.predict_detailed(texts).replies

    with pytest.raises(FileNotFoundError, match="no such LM classifier folder"):
        load_lm_classifier(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{bare}: not an LM classifier folder"):
        load_lm_classifier(bare)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST).write_text(json.dumps({k: v for k, v in info.items() if k != "instruction"}))
    with pytest.raises(ValueError, match=rf"{broken / MANIFEST}: field 'instruction' is missing"):
        load_lm_classifier(broken)
    from novalign.flywheel.taxonomy import DEFAULT_TAXONOMY

    yaml_text = DEFAULT_TAXONOMY.read_text(encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(yaml_text.replace("version:", "# an edited copy\nversion:", 1))
    tax = load_taxonomy(str(other))
    assert tax.digest != info["taxonomy_digest"]
    with pytest.raises(ValueError, match=rf"{folder / MANIFEST}: field 'taxonomy_digest'.*{tax.digest}"):
        load_lm_classifier(folder, tax)


def test_training_errors_and_incomplete_rows_counted(tmp_path):
    """A label that is no leaf is an error naming the dimension; no fully labeled text is an error; texts
    lacking a label on a dimension are counted in the manifest (skipped_incomplete), not silently dropped; a
    model trained on a caller's conversation format (messages_fn) is refused by the classifier loader."""
    with pytest.raises(ValueError, match=r"ability: labels \['Juggling'\] are no leaves"):
        train_lm_classifier(["a", "b"], {"ability": ["Math", "Juggling"]}, tmp_path / "x")
    with pytest.raises(ValueError, match="none of the 2 texts is labeled on every dimension"):
        train_lm_classifier(["a", "b"], {"ability": [None, None]}, tmp_path / "x")
    cfg = LMClassifierConfig(**{**TINY, "steps": 2})
    clf = train_lm_classifier(["What is 2 plus 2?", "Write a poem.", "Sort a list in C++."],
                              {"ability": ["Math", "Creation", None]}, tmp_path / "y", config=cfg)
    assert clf.manifest["train_records"] == 2 and clf.manifest["skipped_incomplete"] == 1
    # trained on the caller's own conversation (to be served as a labeler): not loadable as a classifier
    train_lm_classifier(["What is 2 plus 2?", "Write a poem."], {"ability": ["Math", "Creation"]}, tmp_path / "z",
                        config=cfg, messages_fn=lambda t: [{"role": "user", "content": f"<<<{t}>>>"}])
    with pytest.raises(ValueError, match=rf"{tmp_path / 'z' / MANIFEST}: field 'prompt_format' is 'custom'"):
        load_lm_classifier(tmp_path / "z")


def test_cli_train_classifier_kind_lm_and_classify(tmp_path):
    """`novalign data train-classifier --kind lm` trains and scores on a held-out split; `data classify`
    sees from the folder that it is an LM classifier and labels new prompts, counting failed replies."""
    from typer.testing import CliRunner

    from novalign.cli import app

    train = _pool(12, seed=0)
    write_jsonl(tmp_path / "l.jsonl", [{"prompt": t, "labels": {"ability": a}} for t, a in train])
    (tmp_path / "lm.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "train-classifier", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "clf"),
                              "--kind", "lm", "--lm-config", str(tmp_path / "lm.yaml"), "--test-share", "0.25"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output.strip().splitlines()[-1])
    assert metrics["kind"] == "lm" and metrics["train"] == 27 and metrics["test"] == 9
    assert set(metrics["vs_labels"]["ability"]) == {"lm_classifier", "tfidf"} and "failures" in metrics
    write_jsonl(tmp_path / "new.jsonl", [{"prompt": t} for t, _ in _pool(3, seed=2)])
    out = runner.invoke(app, ["data", "classify", str(tmp_path / "new.jsonl"), str(tmp_path / "out.jsonl"),
                              "--model", str(tmp_path / "clf")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["kind"] == "lm" and summary["records"] == 9 and summary["failures"]["replies"] == 9
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    labeled = [r for r in rows if r["labels"].get("ability")]
    assert len(labeled) + summary["failures"]["unlabeled_cells"] == 9
    assert all(r["label_source"] == {"ability": "lm_classifier"} for r in labeled)
    bad = runner.invoke(app, ["data", "train-classifier", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "c2"),
                              "--kind", "lm", "--lm-steps", "0"])
    assert bad.exit_code != 0 and "steps" in bad.output
    (tmp_path / "typo.yaml").write_text("stepz: 3\n")
    typo = runner.invoke(app, ["data", "train-classifier", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "c3"),
                               "--kind", "lm", "--lm-config", str(tmp_path / "typo.yaml")])
    assert typo.exit_code != 0 and f"{tmp_path / 'typo.yaml'}: stepz: Extra inputs are not permitted" in typo.output


def test_the_classify_step_runs_an_lm_classifier(trained, tmp_path):
    """The pipeline's `classify` step takes an LM classifier folder as it takes an embedding one: every record
    gets the classifier's ability (the same as predict), with its confidence and source; labels already on a
    record stay (overwrite false)."""
    from novalign.flywheel.pipeline import Pipeline

    clf, folder, test = trained
    texts = [t for t, _ in test]
    src = tmp_path / "p.jsonl"
    write_jsonl(src, [{"prompt": t} for t in texts] + [{"prompt": texts[0], "labels": {"ability": "Role"}}])
    run = Pipeline(tmp_path / "run", progress=False).source("p", src).step(
        "clf", "classify", {"model": str(folder)}).run()
    out = run.records("clf")
    want = [p["ability"][0] for p in clf.predict(texts)]
    assert [r["labels"]["ability"] for r in out[:-1]] == want
    assert all(r["label_source"]["ability"] == "classifier" and 0 < r["label_confidence"]["ability"] <= 1 for r in out[:-1])
    assert out[-1]["labels"]["ability"] == "Role"
