"""llm_label over real HTTP: label -> vote -> train -> classify end to end against two `novalign serve`
processes whose tiny models were trained (our SFT, tests/memorized_model.py) to answer the exact prompts
llm_label renders; and its labelers asked concurrently (scripted stand-ins for external LLMs)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from novalign.data.io import write_jsonl
from novalign.flywheel.pipeline import Pipeline
from novalign.flywheel.steps.prompt_labels import label_messages
from novalign.flywheel.taxonomy import parse_taxonomy

TAXONOMY = ("name: t\nversion: '1'\ndimensions:\n  - name: ability\n    labels:\n      - {name: Math}\n"
            "      - {name: Code}\n      - {name: KQA}\n  - name: language\n    labels:\n      - {name: en}\n"
            "      - {name: zh-Hans}\n")
PROMPTS = [("Solve 3x + 5 = 20 for x.", "Math", "en"), ("求方程 2x - 4 = 10 的解。", "Math", "zh-Hans"),
           ("Write a Python function that reverses a string.", "Code", "en"),
           ("用 Python 写一个函数，计算列表的平均值。", "Code", "zh-Hans"),
           ("Who wrote the novel Pride and Prejudice?", "KQA", "en"), ("长城有多长？", "KQA", "zh-Hans")]
DIMS = ["ability", "language"]


def test_label_vote_train_classify_against_novalign_serve(memorized_model, tmp_path):
    """Labeler 'alpha' (n=2 at temperature 0: two identical votes) answers every prompt with its true labels;
    'beta' (quota: the first 2 prompts) calls prompt 0 Code. Majority per dimension: prompt 0's ability is
    Math 2 : Code 1 -> Math, confidence 2/3; every other label is unanimous (1.0). No vote fails. alpha's
    server gets 6 x 2 = 12 requests, beta's 2. The classifier trained on the voted labels labels two held-out
    prompts: a Math one in English and a Code one in Chinese."""
    from cli_server import health, served

    from novalign.config.llm import LLMConfig
    from novalign.flywheel.classify import train_classifier

    (tmp_path / "t.yaml").write_text(TAXONOMY)
    tax = parse_taxonomy(TAXONOMY)

    def pairs(wrong: dict[int, str], n: int):
        return [(label_messages(p, tax, DIMS, 0), json.dumps({"ability": wrong.get(i, a), "language": lang}))
                for i, (p, a, lang) in enumerate(PROMPTS[:n])]

    write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": p} for i, (p, _, _) in enumerate(PROMPTS)])
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with ExitStack() as servers, ThreadPoolExecutor(1) as pool:
        # alpha's server starts (imports, loads) in a thread while beta's model trains here: the two overlap
        ua = pool.submit(servers.enter_context, served(memorized_model(pairs({}, 6)), name="alpha", env=env))
        ub = servers.enter_context(served(memorized_model(pairs({0: "Code"}, 2)), name="beta", env=env))
        ua = ua.result()
        llm = LLMConfig(api_key="k", structured_attempts=1, max_attempts=2, progress=False)
        p = Pipeline(tmp_path / "run", llm=llm, progress=False).source("p", tmp_path / "p.jsonl", id_field="id")
        p.step("votes", "llm_label", {"taxonomy": str(tmp_path / "t.yaml"), "examples_per_leaf": 0, "n": 2,
                                      "temperature": 0.0, "max_tokens": 32, "models": [
            {"name": "alpha", "llm": {"base_url": ua, "model": "alpha"}},
            {"name": "beta", "llm": {"base_url": ub, "model": "beta"}, "n": 1, "max_prompts": 2}]})
        p.step("vote", "label_vote", {"taxonomy": str(tmp_path / "t.yaml"), "method": "majority"})
        voted = p.run().records("vote")
        assert health(ua)["requests"] == 12 and health(ub)["requests"] == 2
    assert all(v["error"] is None and v["labels"] for r in voted for v in r["label_votes"])
    assert [len(r["label_votes"]) for r in voted] == [3, 3, 2, 2, 2, 2]
    assert [r["labels"] for r in voted] == [{"ability": a, "language": lang} for _, a, lang in PROMPTS]
    assert voted[0]["label_confidence"] == {"ability": round(2 / 3, 6), "language": 1.0}
    assert all(r["label_confidence"] == {"ability": 1.0, "language": 1.0} for r in voted[1:])
    clf = train_classifier([r["prompt"] for r in voted], {d: [r["labels"][d] for r in voted] for d in DIMS})
    clf.save(tmp_path / "clf")
    write_jsonl(tmp_path / "new.jsonl", [{"id": "h0", "prompt": "Solve 7x - 2 = 12 for x."},
                                         {"id": "h1", "prompt": "用 Python 写一个函数，反转一个字符串。"}])
    q = Pipeline(tmp_path / "run2", progress=False).source("new", tmp_path / "new.jsonl", id_field="id")
    q.step("cls", "classify", {"model": str(tmp_path / "clf")})
    assert [r["labels"] for r in q.run().records("cls")] == [{"ability": "Math", "language": "en"},
                                                           {"ability": "Code", "language": "zh-Hans"}]
    # 2 examples a class < 3 folds: no cross-validation, each head on the embedding + char n-grams at C 10
    assert clf.meta["selection"]["ability"] == {"blocks": ["embedding", "char"], "C": 10.0, "cv_macro_f1": {},
                                                "not_selected": "class(es) ['Code', 'KQA', 'Math'] have fewer "
                                                                "than 3 examples"}
    _check_format_1_reads_the_same(tmp_path / "clf", clf)


def _check_format_1_reads_the_same(folder, clf):
    """A folder saved before heads chose their blocks (format 1: no `format` or `head_blocks`, one char
    n-gram `vectorizer`) loads as heads on the embedding + char n-grams and predicts what this one predicts;
    a folder of an unknown later format is refused naming the file."""
    import joblib
    import pytest

    from novalign.flywheel.classify import load_classifier

    old = folder.parent / "clf-format1"
    old.mkdir()
    info = json.loads((folder / "classifier.json").read_text())
    info = {k: v for k, v in info.items() if k not in ("format", "head_blocks")}
    (old / "classifier.json").write_text(json.dumps(info))
    joblib.dump({"heads": clf.heads, "vectorizer": clf.vectorizers["char"]}, old / "heads.joblib")
    texts = [p for p, _, _ in PROMPTS]
    loaded = load_classifier(old)
    loaded.embedder = clf.embedder
    assert loaded.head_blocks == {"ability": ["embedding", "char"], "language": ["embedding", "char"]}
    assert loaded.predict(texts) == clf.predict(texts)
    (old / "classifier.json").write_text(json.dumps({**info, "format": 9}))
    with pytest.raises(ValueError, match=r"clf-format1/classifier.json: format 9: this novalign reads"):
        load_classifier(old)


def test_llm_label_asks_its_labelers_concurrently(tmp_path):
    """Two labelers, scripted OpenAI-compatible routes standing in for external LLMs, one prompt. Each route's
    handler marks its request in flight, then waits (up to 5 s) until the other route's request is in flight
    too, and records whether it came. Asked concurrently (a thread per labeler, as llm_generate asks), both
    requests meet at once: both True. Asked one after another, labeler a's request waits its 5 s alone: False.
    The votes come out in the labelers' configured order whatever order the replies arrive in."""
    import threading

    from scripted_llm import ScriptedLLM

    from novalign.config.llm import LLMConfig

    in_flight = {"a": threading.Event(), "b": threading.Event()}
    met: dict[str, bool] = {}

    def reply(route, messages):
        in_flight[route].set()
        met[route] = in_flight["b" if route == "a" else "a"].wait(5)
        return json.dumps({"ability": "Math", "language": "en"})

    (tmp_path / "t.yaml").write_text(TAXONOMY)
    write_jsonl(tmp_path / "p.jsonl", [{"id": "p0", "prompt": PROMPTS[0][0]}])
    ext = ScriptedLLM(reply)
    try:
        llm = LLMConfig(api_key="k", structured_attempts=1, max_attempts=1, progress=False)
        p = Pipeline(tmp_path / "run", llm=llm, progress=False).source("p", tmp_path / "p.jsonl", id_field="id")
        p.step("votes", "llm_label", {"taxonomy": str(tmp_path / "t.yaml"), "examples_per_leaf": 0, "models": [
            {"name": "a", "llm": {"base_url": ext.base_url("a"), "model": "a"}},
            {"name": "b", "llm": {"base_url": ext.base_url("b"), "model": "b"}}]})
        [rec] = p.run().records("votes")
    finally:
        ext.close()
    assert met == {"a": True, "b": True}
    assert [(v["labeler"], v["labels"], v["error"]) for v in rec["label_votes"]] == [
        ("a/0", {"ability": "Math", "language": "en"}, None), ("b/0", {"ability": "Math", "language": "en"}, None)]
