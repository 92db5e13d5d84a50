"""The ``select_diverse`` step through the flywheel engine: a pipeline YAML run by ``novalign data run`` on a
few dozen generated prompts (eight task templates), with the triplet fine-tune sized down (``max_steps``) so
the whole run takes seconds. Checks the real outputs: the kept records number the budget, every record kept or
dropped carries its cluster path, and the saved embedder is a sentence-transformers folder that loads and
encodes like the tuned model."""

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from novalign.cli import app
from novalign.world.selection_pool import diversity_pool


def test_select_diverse_step_runs_in_a_pipeline(tmp_path):
    pool = diversity_pool(40, 8, seed=3)
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"_id": r["_id"], "prompt": r["prompt"]}) + "\n" for r in pool))
    emb_dir = tmp_path / "embedder"
    cfg = {"run_dir": str(tmp_path / "run"), "progress": False, "workers": 1,
           "sources": {"p": {"path": str(src), "id_field": "_id"}},
           "steps": [{"name": "diverse", "type": "select_diverse",
                      "config": {"budget": 12, "n_coarse": 1, "fine_size": 5, "neighbors": 4, "max_triplets": 16,
                                 "max_steps": 2, "batch_size": 8, "lr": 1e-4,
                                 "model_dir": str(emb_dir)}}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["data", "run", str(path)])
    assert res.exit_code == 0, res.output
    (folder,) = (tmp_path / "run" / "steps").glob("diverse-*")
    kept = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    stats = json.loads((folder / "stats.json").read_text())
    assert len(kept) == 12 and len({r["_id"] for r in kept}) == 12
    assert stats["dropped_by_reason"] == {"not selected for diversity": 28}
    for r in kept:  # coarse / loosest cut / ... / tightest cut, each id naming its parent
        path_ = r["cluster_path"]
        assert len(path_) == 4 and all(b.startswith(a + "/") for a, b in zip(path_, path_[1:]))
    drops = [json.loads(line) for line in (folder / "drops.jsonl").read_text().splitlines()]
    assert len(drops) == 28 and all(len(d["detail"]["cluster_path"]) == 4 for d in drops)
    kept_ids = {r["_id"] for r in kept}
    assert kept_ids.isdisjoint(d["_id"] for d in drops) and len(kept_ids | {d["_id"] for d in drops}) == 40

    from sentence_transformers import SentenceTransformer

    from novalign.flywheel.diversity import base_model_path

    texts = [r["prompt"] for r in kept[:3]]
    out = SentenceTransformer(str(emb_dir), device="cpu").encode(texts, normalize_embeddings=True)
    base = SentenceTransformer(base_model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    assert out.shape == (3, 384) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
    assert not np.allclose(out, base, atol=1e-4)  # the two training steps moved the weights
