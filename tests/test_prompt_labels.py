"""The prompt taxonomy, vote aggregation (majority, Dawid-Skene), confidence and the review queue."""

from __future__ import annotations

import numpy as np
import pytest

from novalign.data.annotation import AnnotationResult, read_tasks, write_tasks
from novalign.data.io import DataError
from novalign.flywheel.labels import (aggregate_records, apply_corrections, dawid_skene, majority_vote,
                                      review_queue, review_tasks, vote_matrix)
from novalign.flywheel.taxonomy import TaxonomyError, load_taxonomy, parse_taxonomy

GOOD = """\
name: t
version: "1"
dimensions:
  - name: ability
    labels:
      - {name: Math}
      - {name: Code}
  - name: attributes
    under: ability
    labels:
      - {name: algebra, parent: Math}
      - {name: debugging, parent: Code}
  - name: language
    labels:
      - name: Chinese
        children:
          - {name: zh-Hans}
      - {name: en}
"""


def test_taxonomy_loads_leaves_paths_and_the_bundled_default():
    t = parse_taxonomy(GOOD, "t.yaml")
    assert t.leaves("language") == ["zh-Hans", "en"]
    assert t.dimensions["language"].path("zh-Hans") == ("Chinese", "zh-Hans")
    assert t.check({"ability": "Math", "attributes": "debugging"}) == {
        "attributes": "'debugging' belongs under ability 'Code', not 'Math'"}
    assert t.check({"language": "Chinese"}) == {"language": "'Chinese' is no leaf of language"}
    default = load_taxonomy()
    assert default.leaves("ability") == ["Math", "Reason", "IF", "IP", "FC", "KQA", "Role", "Code", "Creation"]
    assert default.leaves("difficulty") == ["easy", "intermediate", "difficult"]
    assert default.leaves("constraints") == ["unconstrained", "simple", "strong"]


@pytest.mark.parametrize("old,new,line,words", [
    ("{name: algebra, parent: Math}", "{name: algebra, parent: Maths}", 11, "unknown parent 'Maths'"),
    ("{name: debugging, parent: Code}", "{name: algebra, parent: Code}", 12, "'algebra' also on line 11"),
    ("        children:\n          - {name: zh-Hans}\n", "        children: []\n", 16, "empty level"),
    ("under: ability", "under: skill", 9, "under 'skill' is no other dimension"),
    ("{name: debugging, parent: Code}", "{name: debugging, parent: Math}", 7, "ability Code: empty level"),
    ("      - {name: en}", "      - {name: en, colour: red}", 18, "unknown key 'colour'"),
])
def test_taxonomy_errors_name_the_line(old, new, line, words):
    with pytest.raises(TaxonomyError) as err:
        parse_taxonomy(GOOD.replace(old, new), "t.yaml")
    assert str(err.value).startswith(f"t.yaml:{line}: ") and words in str(err.value), str(err.value)


def test_majority_vote_by_hand():
    """Classes (A, B, C); rows = items, columns = labelers; None = a failed vote.
    (A, A, B) -> A at 2/3; (B, C, None) -> tie B/C at 1/2, the lowest index B wins; (None, None, None) -> no
    label, confidence 0; (C, C, C) -> C at 1."""
    V = vote_matrix([["A", "A", "B"], ["B", "C", None], [None, None, None], ["C", "C", "C"]], ["A", "B", "C"])
    labels, conf = majority_vote(V, 3)
    assert labels.tolist() == [0, 1, -1, 2]
    assert np.allclose(conf, [2 / 3, 1 / 2, 0, 1])


def test_dawid_skene_one_em_round_by_hand():
    """Classes A=0, B=1; labelers w0, w1, w2; items i0 (A, A, A), i1 (A, B, A), i2 (B, B, A).
    Start (majority shares): i0 [1, 0], i1 [2/3, 1/3], i2 [1/3, 2/3].
    M-step: priors = column means = [2/3, 1/3]. Confusions (row: true class, column: said), soft counts:
    w0 said A, A, B: true A -> said A 1 + 2/3, said B 1/3 -> [5/6, 1/6]; true B -> [1/3, 2/3].
    w1 said A, B, B: true A -> said A 1, said B 2/3 + 1/3 -> [1/2, 1/2]; true B -> said A 0, B 1 -> [0, 1].
    w2 said A always -> [1, 0] for both.
    E-step i1 (A, B, A): A: 2/3 * 5/6 * 1/2 * 1 = 5/18; B: 1/3 * 1/3 * 1 * 1 = 2/18 -> p(A) = 5/7.
    i2 (B, B, A): A: 2/3 * 1/6 * 1/2 = 1/18; B: 1/3 * 2/3 * 1 = 4/18 -> p(B) = 4/5.
    i0: B needs w1 to say A under true B (probability 0) -> p(A) = 1.
    Both split items grow more confident than their majority share (2/3): w2 says A to everything, so DS
    learns its vote carries no information."""
    V = vote_matrix([["A", "A", "A"], ["A", "B", "A"], ["B", "B", "A"]], ["A", "B"])
    r = dawid_skene(V, 2, n_iter=1, smoothing=0.0)
    assert np.allclose(r.priors, [2 / 3, 1 / 3])
    assert np.allclose(r.confusion[0], [[5 / 6, 1 / 6], [1 / 3, 2 / 3]])
    assert np.allclose(r.confusion[1], [[1 / 2, 1 / 2], [0, 1]])
    assert np.allclose(r.confusion[2], [[1, 0], [1, 0]])
    assert np.allclose(r.posteriors, [[1, 0], [5 / 7, 2 / 7], [1 / 5, 4 / 5]], atol=1e-8)
    assert r.labels.tolist() == [0, 0, 1]
    # an item whose every vote failed takes no part and gets no label (never guessed)
    r2 = dawid_skene(vote_matrix([["A", "A", "A"], [None, None, None], ["A", "B", "A"], ["B", "B", "A"]], ["A", "B"]),
                     2, n_iter=1, smoothing=0.0)
    assert r2.labels.tolist() == [0, -1, 0, 1] and r2.confidence[1] == 0.0
    assert np.allclose(r2.posteriors[[0, 2, 3]], r.posteriors)


@pytest.mark.filterwarnings("ignore")  # crowd-kit's pandas deprecation warnings
def test_dawid_skene_agrees_with_crowd_kit_and_beats_majority():
    """One reliable labeler (90 %) and four right half the time whose errors all go to the next class (a
    systematic confusion, as a model that reads 'intermediate' for 'easy'): majority follows the four when
    they agree in error; Dawid-Skene learns each confusion and undoes it. crowd-kit's DawidSkene (an
    independent implementation) gets the same labels and posteriors."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    V = np.stack([np.where(rng.random(300) < acc, truth, (truth + 1) % 3) for acc in (0.9, .5, .5, .5, .5)], 1)
    mine = dawid_skene(V, 3, smoothing=0.0, n_iter=100, tol=1e-7)
    maj, _ = majority_vote(V, 3)
    assert (mine.labels == truth).mean() > 0.9 > (maj == truth).mean() + 0.1
    df = pd.DataFrame([(i, w, int(V[i, w])) for i in range(300) for w in range(5)], columns=["task", "worker", "label"])
    ck = DawidSkene(n_iter=100, tol=1e-7).fit(df)
    theirs = ck.probas_.reindex(range(300))[[0, 1, 2]].to_numpy()
    assert (theirs.argmax(1) == mine.labels).all()
    # crowd-kit clips every probability at 1e-10 (so its near-0/1 posteriors differ in the last digits)
    assert np.abs(theirs - mine.posteriors).max() < 1e-2


def _voted_records():
    t = parse_taxonomy(GOOD, "t.yaml")
    votes = {  # item -> per labeler (ability, language) or None (a failed vote)
        "a": [("Math", "en"), ("Math", "en"), ("Math", "en")],
        "b": [("Math", "en"), ("Code", "en"), ("Math", "zh-Hans")],
        "c": [("Code", "zh-Hans"), None, ("Code", "zh-Hans")],
        "d": [("Code", "en"), ("Math", "zh-Hans"), None],
    }
    records = [{"_id": k, "prompt": f"prompt {k}", "label_votes": [
        {"labeler": f"m{j}", "labels": None if v is None else {"ability": v[0], "language": v[1]},
         "error": "parse" if v is None else None} for j, v in enumerate(vs)]} for k, vs in votes.items()]
    return t, records


def test_confidence_orders_unanimous_before_split_and_the_queue_takes_the_least_confident(tmp_path):
    """Majority confidences (ability, language): a (1, 1), b (2/3, 2/3), c (1, 1) -- two valid votes that
    agree, the failed one counted --, d (1/2, 1/2) -- ties. By record (expected wrong labels = sum of
    1 - confidence): d 1, b 2/3, a and c 0; share 0.5 of 4 records -> d, b. By label: 8 labels, share 0.25
    -> the 2 lowest: d.ability and d.language (1/2); share 0.5 -> 4: those, then b's two (2/3)."""
    t, records = _voted_records()
    agg = aggregate_records(records, t, method="majority", dimensions=["ability", "language"])
    assert [a["labels"] for a in agg][2] == {"ability": "Code", "language": "zh-Hans"}
    assert [a["label_votes_failed"] for a in agg] == [0, 0, 1, 1]
    voted = [{**r, **a} for r, a in zip(records, agg)]
    assert review_queue(voted, 0.25) == {3: ["ability", "language"]}
    assert review_queue(voted, 0.5) == {3: ["ability", "language"], 1: ["ability", "language"]}
    tasks = review_tasks(voted, 0.5, unit="record")
    assert [x.task_id for x in tasks] == ["d", "b"]
    assert tasks[0].kind == "labels" and tasks[0].confidence == {"ability": 0.5, "language": 0.5}
    write_tasks(tmp_path / "queue.jsonl", tasks)
    back, _ = read_tasks([tmp_path / "queue.jsonl"])
    assert [x.task_id for x in back] == ["d", "b"]


def test_corrections_win_over_votes_and_bad_corrections_name_the_line():
    t, records = _voted_records()
    voted = [{**r, **a} for r, a in zip(records, aggregate_records(records, t, method="majority",
                                                                  dimensions=["ability", "language"]))]
    fixed, n = apply_corrections(voted, [AnnotationResult(task_id="d", annotator="ann1", kind="labels",
                                                          labels={"ability": "Code"})], t)
    assert n == 1 and fixed[3]["labels"]["ability"] == "Code" and fixed[3]["label_confidence"]["ability"] == 1.0
    assert fixed[3]["label_source"] == {"ability": "human:ann1"} and voted[3]["labels"]["ability"] == "Math"  # the tie's pick
    bad = [AnnotationResult(task_id="a", annotator="x", kind="labels", labels={"ability": "Math"}),
           AnnotationResult(task_id="b", annotator="x", kind="labels", labels={"language": "klingon"})]
    with pytest.raises(DataError) as err:
        apply_corrections(voted, bad, t, path="res.jsonl")
    assert str(err.value).startswith("res.jsonl:2: field 'labels.language'") and "klingon" in str(err.value)


def test_parse_vote_never_guesses_and_scores_by_hand():
    """A vote's value that is no leaf ('Maths', a group 'Chinese') or missing is recorded as None with the
    problem named. Scores of predictions (a, a, b) against gold (a, b, b): accuracy 2/3; class a: precision
    1/2, recall 1 -> F1 2/3; class b: precision 1, recall 1/2 -> F1 2/3; macro-F1 2/3."""
    from novalign.flywheel.classify import scores
    from novalign.flywheel.steps.prompt_labels import parse_vote

    t = parse_taxonomy(GOOD, "t.yaml")
    labels, problems = parse_vote({"ability": "Maths", "language": "Chinese"}, t, ["ability", "attributes", "language"])
    assert labels == {"ability": None, "attributes": None, "language": None}
    assert problems == ["ability: 'Maths' is no leaf", "attributes: missing", "language: 'Chinese' is no leaf"]
    assert parse_vote(["Math"], t, ["ability"]) == ({"ability": None}, ["expected a JSON object, got list"])
    s = scores(["a", "a", "b"], ["a", "b", "b"])
    assert s["accuracy"] == round(2 / 3, 4) and s["macro_f1"] == round(2 / 3, 4)


def test_label_messages_show_only_the_dimensions_asked():
    """Asked for ability and language, the labeling prompt shows those two sections of the bundled taxonomy
    (in taxonomy order) and none of the other four; asked for all, all six."""
    from novalign.flywheel.steps.prompt_labels import label_messages

    t = load_taxonomy()
    two = label_messages("What is 2+3?", t, ["language", "ability"], 0)[0]["content"]
    heads = [line.split(" --")[0] for line in two.splitlines() if line.startswith("## ")]
    assert heads == ["## ability", "## language"]
    every = label_messages("What is 2+3?", t, list(t.dimensions), 0)[0]["content"]
    assert [line.split(" --")[0] for line in every.splitlines() if line.startswith("## ")] == [
        f"## {d}" for d in t.dimensions]


def test_cv_select_picks_the_informative_block_by_hand():
    """Six rows, y = x x x y y y; fold k validates rows k and k+3 and trains on the other four (2 x, 2 y).
    Block 'a' is +1 on x rows and -1 on y rows: every fold's head separates them, so the out-of-fold
    predictions are all right: macro-F1 1.0. Block 'b' is all zeros: coefficient 0 and, the training rows
    balanced, intercept 0 -- probability 0.5, and a tie goes to the first class, so every row is called x:
    F1(x) = 2 * 0.5 * 1 / (0.5 + 1) = 2/3 (precision 3/6, recall 1), F1(y) = 0, macro 1/3. 'a+b' scores as 'a'
    (1.0) and loses the tie to the earlier 'a'; between C 1 and 10 (equal scores) the smaller C wins."""
    import numpy as np
    from scipy import sparse

    from novalign.flywheel.classify import cv_select

    y = ["x", "x", "x", "y", "y", "y"]
    a = sparse.csr_matrix(np.array([[1.0], [1], [1], [-1], [-1], [-1]]))
    b = sparse.csr_matrix(np.zeros((6, 1)))
    folds = []
    for k in range(3):
        va = [k, k + 3]
        tr = [i for i in range(6) if i not in va]
        folds.append((tr, va, {"a": a[tr], "b": b[tr]}, {"a": a[va], "b": b[va]}))
    names, C, scored = cv_select(folds, y, [("b",), ("a",), ("a", "b")], [10.0, 1.0])
    assert (names, C) == (("a",), 1.0)
    assert scored == {"b@1": 0.3333, "b@10": 0.3333, "a@1": 1.0, "a@10": 1.0, "a+b@1": 1.0, "a+b@10": 1.0}
