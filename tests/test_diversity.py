"""Task-aware diversity selection (novalign.flywheel.diversity): LCS pair mining by hand, layered clustering
on points with known distances, budget selection, and the triplet fine-tune moving pairs the right way."""

from __future__ import annotations

import numpy as np
import pytest

from novalign.flywheel import diversity as dv


def test_lcs_by_hand_and_rapidfuzz_agree():
    """``a b c d`` / ``a c b d``: LCS 3 (a b d). ``x y`` / ``z``: 0. ``translate the text`` / ``translate this
    text``: 2 (translate, text). The ratio divides by the longer length: 3/4, 0/2, 2/3."""
    cases = [("a b c d", "a c b d", 3), ("x y", "z", 0), ("translate the text", "translate this text", 2)]
    for a, b, want in cases:
        ta, tb = a.split(), b.split()
        assert dv.lcs_length(ta, tb) == want
        assert dv.lcs_ratio(ta, tb) == pytest.approx(want / max(len(ta), len(tb)))
    rng = np.random.default_rng(0)
    for _ in range(20):  # rapidfuzz's bit-parallel LCS equals the plain dynamic programme
        a, b = list(rng.integers(0, 4, rng.integers(0, 12))), list(rng.integers(0, 4, rng.integers(0, 12)))
        assert dv.lcs_ratio(a, b) * max(len(a), len(b), 1) == pytest.approx(dv.lcs_length(a, b))


def test_pair_mining_rules_by_hand():
    """Four prompts (instruction, blank line, context):

    p0 "Summarize the text in one line." + context X (about ovens)
    p1 "Summarize the text in one line." + context Y (about comets): same instruction (ratio 7/7 = 1 >= 0.8),
       inputs share little (below 0.6) -> hard positive.
    p2 "Write a poem about it." + context X: instruction vs p0 shares "the"? no: tokens summarize the text in
       one line . / write a poem about it . share only "." -> 1/7 <= 0.4 -> hard negative (same context!).
    p3 = p0 with the same context: instruction 1 and input 1 -> a near-duplicate: neither.
    p4 = p1 with the instruction last: the split takes the shortest paragraph as the instruction wherever it
    stands, so p0 / p4 is a hard positive and p1 / p4 a duplicate (neither).
    """
    x = "The oven was hot and the bread rose slowly while the baker waited by the door."
    y = "A comet crossed the winter sky and astronomers counted its tail for hours."
    p0 = f"Summarize the text in one line.\n\n{x}"
    p1 = f"Summarize the text in one line.\n\n{y}"
    p2 = f"Write a poem about it.\n\n{x}"
    p4 = f"{y}\n\nSummarize the text in one line."
    s = [dv.split_prompt(p) for p in (p0, p1, p2, p0, p4)]
    assert s[0][0] == ["summarize", "the", "text", "in", "one", "line", "."]
    assert s[4][0] == s[0][0] and s[4][1] == s[1][1]
    kind, ins, inp = dv.pair_kind(s[0], s[1])
    assert kind == "positive" and ins == 1.0 and inp < 0.6
    kind, ins, _ = dv.pair_kind(s[0], s[2])
    assert kind == "negative" and ins == pytest.approx(1 / 7)
    assert dv.pair_kind(s[0], s[3])[0] is None
    assert dv.pair_kind(s[0], s[4])[0] == "positive"

    assert dv.pair_kind(s[1], s[4])[0] is None  # p4 = p1 reordered: same instruction and input, a duplicate

    # mine_pairs compares only near neighbours of other fine clusters: p0 and p3 share fine cluster 0 and are
    # never compared; with two neighbours, p0's nearest other-cluster records are p2 (cos 1) and p4 (cos .99)
    emb = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.99, 0.141]], dtype=np.float32)
    fine = np.array([0, 1, 2, 0, 3])
    pairs = dv.mine_pairs([p0, p1, p2, p0, p4], emb, np.zeros(5, dtype=int), fine, neighbors=2)
    found = [p[:3] for p in pairs]
    assert (0, 2, "negative") in found and (0, 4, "positive") in found
    assert all({i, j} != {0, 3} for i, j, *_ in pairs) and (1, 4, None) not in found
    trip = dv.triplets([(0, 1, "positive", 1, 0), (0, 2, "negative", 0.1, 1), (1, 4, "positive", 1, 0)])
    assert trip == [(0, 1, 2)]  # only record 0 has both a positive and a negative


def test_layered_clusters_by_hand(tmp_path):
    """Unit vectors at angles 0, 10, 30 and 90 degrees: cosine distances 1 - cos: d(0,10) = 0.0152,
    d(10,30) = 0.0603, d(0,30) = 0.1340, d(30,90) = 0.5, d(0,90) = 1, d(10,90) = 0.8264.
    Average linkage: {0,10} at 0.0152; {0,10,30} at mean(0.1340, 0.0603) = 0.0972; all at
    mean(1, 0.8264, 0.5) = 0.7755. Cuts at 0.05, 0.2, 0.9 -> {0,10},{30},{90}; {0,10,30},{90}; one cluster."""
    angles = np.radians([0, 10, 30, 90])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = dv.layered_clusters(emb, [0.05, 0.2, 0.9])
    groups = [sorted({tuple(np.flatnonzero(labels[:, k] == v)) for v in labels[:, k]}) for k in range(3)]
    assert groups[0] == [(0, 1), (2,), (3,)]
    assert groups[1] == [(0, 1, 2), (3,)]
    assert groups[2] == [(0, 1, 2, 3)]
    with pytest.raises(ValueError, match="increasing"):
        dv.layered_clusters(emb, [0.2, 0.1])
    paths = dv.cluster_paths(emb, np.zeros(4, dtype=int), [0.05, 0.2])
    assert paths[0][0] == "0" and paths[0][1] == paths[2][1] != paths[3][1]  # cut 0.2 (loosest) first
    assert paths[0][2] != paths[2][2] and paths[0][2] == paths[1][2]
    # level by level: the one coarse cluster's most central member (centroid at about 30.4 deg -> the 30 deg
    # point, index 2); then the loosest cut's uncovered {90}; then the tight cut's uncovered {0, 10} (centroid at
    # 5 deg, both members equally central)
    assert dv.select_budget(paths, emb, 2) == [2, 3]
    third = dv.select_budget(paths, emb, 3)
    assert third[:2] == [2, 3] and third[2] in (0, 1)
    assert sorted(dv.select_budget(paths, emb, 4)) == [0, 1, 2, 3]
    from novalign.flywheel.diversity_run import cluster_size_chart

    chart = cluster_size_chart(paths, [2, 3], [0.05, 0.2], tmp_path / "sizes.png")
    assert chart.stat().st_size > 1000
    assert dv.budget_count(0.5, 4) == 2 and dv.budget_count(3.0, 4) == 3
    with pytest.raises(ValueError):
        dv.budget_count(1.5, 4)


def test_triplet_finetune_moves_positive_closer_and_negative_farther(tmp_path):
    """A hard positive (same template, other context) and a hard negative (same context, other task): one
    triplet step (a batch of 4 copies) on all-MiniLM-L6-v2 raises cos(anchor, positive) and lowers
    cos(anchor, negative) (two such steps, measured: 0.54 -> 0.97 and 0.69 -> 0.14); the saved folder loads
    back as a sentence-transformers model giving the same embeddings."""
    ctx_a = "The old harbour is full of fishing boats, gulls and tourists in the summer."
    ctx_b = "The university library keeps rare maps, letters and manuscripts in its basement."
    anchor = f"Translate the passage below into French.\n\n{ctx_a}"
    positive = f"Translate the passage below into French.\n\n{ctx_b}"
    negative = f"Count the verbs in the passage below.\n\n{ctx_a}"
    model = dv.load_embedder(seed=0)
    before = dv.embed(model, [anchor, positive, negative])
    dv.finetune(model, [(anchor, positive, negative)] * 4, tmp_path / "emb", epochs=1, batch_size=4, lr=1e-4)
    after = dv.embed(model, [anchor, positive, negative])
    assert after[0] @ after[1] > before[0] @ before[1] + 0.02
    assert after[0] @ after[2] < before[0] @ before[2] - 0.02
    again = dv.embed(dv.load_embedder(str(tmp_path / "emb")), [anchor])
    assert np.allclose(again[0], after[0], atol=1e-5)


def test_head_finetune_leaves_the_transformer_and_follows_from_base_embeddings(tmp_path):
    """``train: head``: a linear head (identity at first) on the frozen MiniLM. Before training the head
    changes nothing (W = I, b = 0 on unit vectors); after two triplet steps the transformer's weights are
    untouched, the hard positive is closer and the hard negative farther, and :func:`apply_head` on the base
    embeddings equals what the tuned model encodes and what its saved folder encodes after loading."""
    ctx_a = "The old harbour is full of fishing boats, gulls and tourists in the summer."
    ctx_b = "The university library keeps rare maps, letters and manuscripts in its basement."
    texts = [f"Translate the passage below into French.\n\n{ctx_a}",
             f"Translate the passage below into French.\n\n{ctx_b}", f"Count the verbs in the passage below.\n\n{ctx_a}"]
    model = dv.load_embedder(seed=0)
    base = dv.embed(model, texts)
    first = next(model[0].parameters()).detach().clone()
    head = dv.add_head(model)
    assert np.allclose(dv.apply_head(head, base), base, atol=1e-6)
    dv.finetune(model, [tuple(texts)] * 8, tmp_path / "emb", batch_size=4, lr=1e-2)
    assert torch_equal(next(model[0].parameters()), first)
    tuned = dv.apply_head(head, base)
    assert tuned[0] @ tuned[1] > base[0] @ base[1] + 0.02 and tuned[0] @ tuned[2] < base[0] @ base[2] - 0.02
    assert np.allclose(dv.embed(model, texts), tuned, atol=1e-5)
    assert np.allclose(dv.embed(dv.load_embedder(str(tmp_path / "emb")), texts), tuned, atol=1e-5)


def torch_equal(a, b) -> bool:
    return bool((a.detach() == b.detach()).all())


def test_select_diverse_command_names_a_bad_record(tmp_path):
    """A record without the prompt field stops the command before any model is loaded, naming file:line:field."""
    import json

    from typer.testing import CliRunner

    from novalign.cli import app

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Summarize this."}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    res = CliRunner().invoke(app, ["data", "select-diverse", "--input", str(data), "--output-dir",
                                   str(tmp_path / "out"), "--budget", "0.5"])
    assert res.exit_code != 0 and "p.jsonl:2" in res.output and "prompt" in res.output


def test_mean_pooling_of_the_exported_graph_by_hand():
    """The exported graph's pooling: token vectors (1, 2), (3, 4), (5, 6) with mask 1 1 0 -> the mean of the
    first two, (2, 3); a second row with mask 1 0 0 -> its first vector (7, 8). The inner module is a plain
    torch module that returns fixed hidden states (as a transformer's ``last_hidden_state``)."""
    import torch

    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [0.0, 0.0], [9.0, 9.0]]])

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"last_hidden_state": hidden})()

    ids = torch.zeros(2, 3, dtype=torch.long)
    out = dv._mean_pooled(Fixed())(ids, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 3.0], [7.0, 8.0]]


def test_int8_encoding_stays_close_to_fp32():
    """``precision="int8"`` (ONNX Runtime, int8 weights) against the PyTorch fp32 encode of the same texts:
    unit length, cosine above 0.97 per text (measured about 0.99 on the pool), a repeated text gets the same
    vector, and a text longer than ``max_seq_length`` is truncated as sentence-transformers truncates it (so
    the two still agree). A model other than Transformer + mean Pooling is refused with a clear error."""
    texts = ["Translate the passage below into French.\n\nThe harbour is full of boats.",
             "Count the verbs in the passage below.\n\nThe library keeps rare maps.",
             "Translate the passage below into French.\n\nThe harbour is full of boats.",
             " ".join(["The comet crossed the winter sky and astronomers counted its tail."] * 6)]
    model = dv.load_embedder(seed=0)
    model.max_seq_length = 24
    fp32 = dv.embed(model, texts)
    int8 = dv.embed(model, texts, precision="int8")
    assert int8.shape == fp32.shape and np.allclose(np.linalg.norm(int8, axis=1), 1, atol=1e-5)
    assert np.all(np.sum(fp32 * int8, axis=1) > 0.97)
    assert np.array_equal(int8[0], int8[2])
    with pytest.raises(ValueError, match="precision"):
        dv.embed(model, texts, precision="int4")
    dv.add_head(model)
    with pytest.raises(ValueError, match="mean Pooling"):
        dv.int8_session(model)
