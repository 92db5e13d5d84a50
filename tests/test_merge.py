"""Model merging (report section 2.4): the four methods by hand, the streamed merge end to end, validation,
atomic output, and a learning-style check that merging two specialists balances them."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT
from novalign.config import ConfigError, MergeConfig, load_config
from novalign.merge import (
    METHODS,
    MergeError,
    ModelStock,
    linear,
    merge_models,
    model_stock,
    task_arithmetic,
    ties,
)
from novalign.merge.methods import keep_count, model_stock_ratio, offset_gram, trim_threshold
from novalign.merge.shards import INDEX_FILE, ShardWriter

T = torch.tensor


# ---------------------------------------------------------------------------------------------- helpers


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors model directory, copied into memory."""
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k).clone() for k in h.keys()})  # noqa: SIM118
    return out


def _variant(src: Path, dst: Path, state: dict[str, torch.Tensor], shard_size: str | None = None) -> Path:
    """Copy ``src``'s config/tokenizer files to ``dst`` and store ``state`` as its weights (sharded if asked)."""
    from huggingface_hub import save_torch_state_dict

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    if shard_size is None:
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    else:
        save_torch_state_dict(state, dst, max_shard_size=shard_size)
    return dst


def _offset(state: dict, seed: int, scale: float = 1e-2, shared_seed: int | None = 99) -> dict[str, torch.Tensor]:
    """state + scale * (shared + own) noise: fine-tunes of one base whose task vectors correlate."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.Generator().manual_seed(shared_seed) if shared_seed is not None else None
    out = {}
    for k, v in state.items():
        noise = torch.randn(v.shape, generator=gen)
        if shared is not None:
            noise += torch.randn(v.shape, generator=shared)
        out[k] = v + scale * noise
    return out


def _cfg(out: Path, **kw) -> MergeConfig:
    kw.setdefault("models", [])
    kw["models"] = [m if isinstance(m, dict) else {"path": str(m)} for m in kw["models"]]
    if kw.get("base_model") is not None:
        kw["base_model"] = str(kw["base_model"])
    return MergeConfig(output_dir=str(out), **kw)


@pytest.fixture(scope="module")
def family(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A base and two fine-tunes of it, each sharded differently (single file, 200 KB and 350 KB shards)."""
    root = tmp_path_factory.mktemp("family")
    base_state = _state(tiny_model_dir)
    return {
        "base": tiny_model_dir,
        "a": _variant(tiny_model_dir, root / "a", _offset(base_state, 1), shard_size="200KB"),
        "b": _variant(tiny_model_dir, root / "b", _offset(base_state, 2), shard_size="350KB"),
    }


# ---------------------------------------------------------------------------------------------- maths by hand


def test_linear_by_hand():
    """θ1 = [1, 2], θ2 = [3, 6], w = [1, 3]: Σ w θ = [1 + 9, 2 + 18] = [10, 20]; normalized by Σ w = 4:
    [2.5, 5]. Unnormalized: [10, 20]."""
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    torch.testing.assert_close(linear([a, b], [1.0, 3.0]), T([2.5, 5.0]))
    torch.testing.assert_close(linear([a, b], [1.0, 3.0], normalize=False), T([10.0, 20.0]))
    assert torch.equal(a, T([1.0, 2.0])), "inputs must not be modified"
    with pytest.raises(ValueError, match="sum to zero"):
        linear([a, b], [1.0, -1.0])


def test_task_arithmetic_by_hand():
    """base [1, 1], θ1 [2, 0], θ2 [1, 3] -> τ1 = [1, −1], τ2 = [0, 2]. w = [1, 0.5], λ = 2:
    Σ w τ = [1, −1 + 1] = [1, 0]; θ = base + 2 · [1, 0] = [3, 1]. A negative weight subtracts a task:
    w = [−1, 0], λ = 1 -> [1 − 1, 1 + 1] = [0, 2]."""
    base, a, b = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 3.0])
    torch.testing.assert_close(task_arithmetic(base, [a, b], [1.0, 0.5], scale=2.0), T([3.0, 1.0]))
    torch.testing.assert_close(task_arithmetic(base, [a, b], [-1.0, 0.0]), T([0.0, 2.0]))


def test_ties_by_hand():
    """base = [1, 1, 1, 1]; τ1 = [1, −2, 0.5, 3], τ2 = [2, 1, −0.2, −1.5]; density 0.5 keeps k = 2 per model.

    Trim: |τ1| = [1, 2, .5, 3], 2nd largest 2 -> τ̂1 = [0, −2, 0, 3]; |τ2| = [2, 1, .2, 1.5], 2nd largest 1.5
    -> τ̂2 = [2, 0, 0, −1.5].
    Elect (w = [1, 1]): sign([2, −2, 0, 1.5]) = [+, −, 0, +].
    Disjoint mean: [2 (τ̂2 only), −2 (τ̂1 only), 0 (none), 3 (τ̂1 agrees, τ̂2 does not)] -> θ = [3, −1, 1, 4].
    λ = 0.5 halves the step: [2, 0, 1, 2.5].
    w = [1, 3]: weighted sum [6, −2, 0, 3 − 4.5 = −1.5] flips entry 3 to −, where only τ̂2 agrees:
    3 · (−1.5) / 3 = −1.5; entry 0: 3 · 2 / 3 = 2; entry 1: −2 / 1 -> θ = [3, −1, 1, −0.5]."""
    base = torch.ones(4)
    a, b = base + T([1.0, -2.0, 0.5, 3.0]), base + T([2.0, 1.0, -0.2, -1.5])
    torch.testing.assert_close(ties(base, [a, b], [1.0, 1.0], density=0.5), T([3.0, -1.0, 1.0, 4.0]))
    torch.testing.assert_close(ties(base, [a, b], [1.0, 1.0], density=0.5, scale=0.5), T([2.0, 0.0, 1.0, 2.5]))
    torch.testing.assert_close(ties(base, [a, b], [1.0, 3.0], density=0.5), T([3.0, -1.0, 1.0, -0.5]))
    # density 1 keeps everything; both agree on entry 0 (mean of 1 and 2), disagree elsewhere
    torch.testing.assert_close(ties(base, [a, b], [1.0, 1.0], density=1.0), T([2.5, -1.0, 1.5, 4.0]))


def test_ties_keep_count_is_mergekits_floor_without_float_noise():
    """k = floor(density · numel), at least 1. Whole-number cases, where float products miss the integer:
    0.07 · 100 = 7.000000000000001 (ceil would keep 8) -> 7; 0.29 · 100 = 28.999999999999996 (a plain floor
    would keep 28) -> 29; 0.5 · 4 = 2 -> 2. A fractional share rounds down: 0.3 · 5 = 1.5 -> 1 (ceil: 2).
    0.2 of 3 entries = 0.6 -> at least one entry -> 1.
    On a tensor: |τ| = 100 distinct magnitudes 1..100, density 0.07 -> the 7 largest (94..100) survive, so
    the threshold is 94."""
    assert keep_count(0.07, 100) == 7 and keep_count(0.29, 100) == 29 and keep_count(0.5, 4) == 2
    assert keep_count(0.3, 5) == 1 and keep_count(0.2, 3) == 1
    offset = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)
    assert trim_threshold(offset, 0.07) == 94.0
    assert trim_threshold(offset, 0.29) == 72.0  # the 29 largest: 72..100


def test_trim_threshold_keeps_ties_at_the_threshold():
    """|τ| = [1, 1, 1, 0], density 0.25 -> k = floor(1) = 1, the largest magnitude is 1: all three 1s stay."""
    assert trim_threshold(T([1.0, -1.0, 1.0, 0.0]), 0.25) == 1.0
    assert trim_threshold(T([3.0, -1.0]), 1.0) == 0.0


def test_model_stock_by_hand():
    """base [1, 1], θ1 [3, 1], θ2 [2, 2] -> τ1 = [2, 0], τ2 = [1, 1]: cos θ = 2 / (2 · √2) = 1/√2;
    N = 2: t = 2 cos / (1 + cos) = √2 / ((√2 + 1)/√2) = 2 / (√2 + 1) = 2(√2 − 1) ≈ 0.8284.
    mean = [2.5, 1.5]; θ = t · mean + (1 − t) · base = base + t · [1.5, 0.5] = [3√2 − 2, √2].

    N = 3, base 0, θ = [1, 1, 0], [1, 0, 1], [0, 1, 1]: every pair has dot 1 and norms √2, cos θ = 0.5;
    t = 3 · 0.5 / (1 + 2 · 0.5) = 0.75; mean = [2/3, 2/3, 2/3] -> θ = [0.5, 0.5, 0.5]."""
    r2 = math.sqrt(2)
    out = model_stock(T([1.0, 1.0]), [T([3.0, 1.0]), T([2.0, 2.0])])
    torch.testing.assert_close(out, T([3 * r2 - 2, r2]))
    t, cos = model_stock_ratio(offset_gram(T([1.0, 1.0]), [T([3.0, 1.0]), T([2.0, 2.0])]))
    assert cos == pytest.approx(1 / r2) and t == pytest.approx(2 * (r2 - 1))
    three = [T([1.0, 1.0, 0.0]), T([1.0, 0.0, 1.0]), T([0.0, 1.0, 1.0])]
    torch.testing.assert_close(model_stock(torch.zeros(3), three), T([0.5, 0.5, 0.5]))


def test_model_stock_degenerate_cases():
    """* all offsets zero: t = 0, the base comes back exactly;
    * orthogonal offsets [1, 0], [0, 1]: cos θ = 0, t = 0 -> base;
    * opposed offsets [1, 0], [−1, 0.5]: cos θ = −1/√1.25 < 0 -> t = 0 -> base (no solution in [0, 1]);
    * one zero offset among three, the others [1, 0] twice: pairs with the zero one count as cos 0, so
      cos θ = (0 + 0 + 1) / 3; t = 3 · (1/3) / (1 + 2/3) = 0.6; mean offset [2/3, 0] -> base + [0.4, 0];
    * identical offsets: cos θ = 1 and t = 1 exactly: the fine-tuned model itself;
    * fewer than two models, or NaN weights: ValueError."""
    base = T([1.0, 2.0])
    assert torch.equal(model_stock(base, [base.clone(), base.clone()]), base)
    assert torch.equal(model_stock(base, [base + T([1.0, 0.0]), base + T([0.0, 1.0])]), base)
    assert torch.equal(model_stock(base, [base + T([1.0, 0.0]), base + T([-1.0, 0.5])]), base)
    one_zero = model_stock(base, [base.clone(), base + T([1.0, 0.0]), base + T([1.0, 0.0])])
    torch.testing.assert_close(one_zero, base + T([0.4, 0.0]))
    tuned = base + T([0.3, -0.7])
    assert torch.equal(model_stock(base, [tuned, tuned.clone()]), tuned)
    with pytest.raises(ValueError, match="at least two"):
        model_stock(base, [tuned])
    with pytest.raises(ValueError, match="NaN"):
        model_stock(base, [tuned, T([float("nan"), 0.0])])


def test_method_objects_match_functions_and_declare_needs():
    """The statistics/combine split gives the same result as the plain function; each method declares
    what it needs, which the config validation reads."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    models = [base + 0.1 * torch.randn(6, 5, generator=g) for _ in range(3)]
    w = (1.0, 2.0, 0.5)
    torch.testing.assert_close(METHODS["linear"](w)(None, models), linear(models, w))
    torch.testing.assert_close(METHODS["task_arithmetic"](w, scale=0.7)(base, models),
                               task_arithmetic(base, models, w, scale=0.7))
    torch.testing.assert_close(METHODS["ties"](w, density=0.3)(base, models), ties(base, models, w, density=0.3))
    torch.testing.assert_close(ModelStock()(base, models), model_stock(base, models))
    assert not METHODS["linear"].needs_base and METHODS["model_stock"].min_models == 2
    assert not ModelStock.uses_weights


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "model_stock"])
def test_streamed_merge_equals_the_functions_on_sharded_inputs(family, tmp_path, method):
    """Inputs sharded three different ways, output sharded at 300 KB, tensors processed in row slices of
    0.05 MiB (the 2048 x 64 embedding in 10 slices): the result equals the plain function on whole tensors."""
    out = tmp_path / "merged"
    weights = {"linear": [0.3, 0.7], "task_arithmetic": [0.5, 1.0], "ties": [1.0, 2.0], "model_stock": [1.0, 1.0]}
    cfg = _cfg(out, method=method, base_model=family["base"], max_shard_size="300KB", chunk_mb=0.05, density=0.5,
               models=[{"path": str(family[k]), "weight": w} for k, w in zip("ab", weights[method])])
    result = merge_models(cfg)
    merged = _state(out)
    base, a, b = _state(family["base"]), _state(family["a"]), _state(family["b"])
    fn = METHODS[method]
    method_obj = fn() if method == "model_stock" else fn(tuple(weights[method]), **(
        {"density": 0.5} if method == "ties" else {}))
    assert set(merged) == set(base) and result.num_tensors == len(base)
    for name in base:
        expected = method_obj(base[name] if method != "linear" else None, [a[name], b[name]])
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not list(tmp_path.glob(".merged.*")), "no temp folder left behind"


def test_merged_model_loads_with_from_pretrained_and_generates(family, tmp_path):
    """Model Stock of the family through the CLI -> an ordinary HF directory: config, tokenizer, chat template."""
    out = tmp_path / "merged"
    cfg_file = tmp_path / "merge.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "method": "model_stock", "base_model": str(family["base"]),
        "models": [{"path": str(family["a"])}, {"path": str(family["b"])}],
        "output_dir": str(out), "max_shard_size": "400KB", "dtype": "bfloat16",
    }))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "novalign.cli", "merge", "--config", str(cfg_file)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Model Stock t" in proc.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert tokenizer.chat_template and (out / "generation_config.json").is_file()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    stop_ids = model.generation_config.eos_token_id
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4 or int(generated[0, -1]) in stop_ids
    base, a, b = _state(family["base"]), _state(family["a"]), _state(family["b"])
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(model.state_dict()[name], model_stock(base[name], [a[name], b[name]]).bfloat16())


def test_tied_embeddings_merge_and_stay_tied(tiny_model_dir, tmp_path):
    """A model with tie_word_embeddings stores only the embedding; the merged one loads tied to it."""
    from novalign.models.load import load_tokenizer, save_pretrained_dir
    from novalign.models.tiny import tiny_config

    tokenizer = load_tokenizer(tiny_model_dir)
    config = tiny_config(tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    save_pretrained_dir(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / "base")
    base = _state(tmp_path / "base")
    assert "lm_head.weight" not in base
    a = _variant(tmp_path / "base", tmp_path / "a", _offset(base, 1))
    b = _variant(tmp_path / "base", tmp_path / "b", _offset(base, 2))
    merge_models(_cfg(tmp_path / "out", method="task_arithmetic", base_model=tmp_path / "base", models=[a, b]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    name = "model.embed_tokens.weight"
    expected = task_arithmetic(base[name], [_state(a)[name], _state(b)[name]], [1.0, 1.0])
    torch.testing.assert_close(emb, expected)


# ---------------------------------------------------------------------------------------------- validation


def test_validation_errors_name_the_tensor_or_file(family, tmp_path):
    base_dir, a = family["base"], family["a"]
    state = _state(base_dir)
    out = tmp_path / "out"

    shape = dict(state, **{"model.norm.weight": torch.ones(3)})
    bad = _variant(base_dir, tmp_path / "shape", shape)
    with pytest.raises(MergeError, match=r"tensor 'model.norm.weight': shape \[3\] in .*shape"):
        merge_models(_cfg(out, method="model_stock", base_model=base_dir, models=[a, bad]))

    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.down_proj.weight"}
    bad = _variant(base_dir, tmp_path / "missing", missing)
    with pytest.raises(MergeError, match=r"missing.*'model.layers.1.mlp.down_proj.weight' is missing"):
        merge_models(_cfg(out, method="task_arithmetic", base_model=base_dir, models=[bad]))

    bad = _variant(base_dir, tmp_path / "arch", state)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match=r"arch/config.json: model_type = 'qwen2'"):
        merge_models(_cfg(out, method="linear", models=[a, bad]))

    integer = dict(state, **{"model.norm.weight": torch.ones(64, dtype=torch.int32)})
    bad = _variant(base_dir, tmp_path / "dtype", integer)
    with pytest.raises(MergeError, match=r"tensor 'model.norm.weight': dtype torch.int32"):
        merge_models(_cfg(out, method="linear", models=[a, bad]))

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(MergeError, match=r"empty: no model.safetensors"):
        merge_models(_cfg(out, method="linear", models=[a, tmp_path / "empty"]))
    assert not out.exists()


def test_tokenizers_must_match_unless_a_source_is_chosen(family, tmp_path):
    other = _variant(family["base"], tmp_path / "other-tok", _state(family["a"]))
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|changed|>"
    (other / "tokenizer.json").write_text(json.dumps(tok))
    cfg = _cfg(tmp_path / "out", method="model_stock", base_model=family["base"], models=[family["b"], other])
    with pytest.raises(MergeError, match=r"tokenizers differ: .*other-tok/tokenizer.json differs"):
        merge_models(cfg)
    cfg.tokenizer_source = "base"
    merge_models(cfg)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (family["base"] / "tokenizer.json").read_bytes()


def test_method_requirements_and_config_errors(family, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="ties needs base_model"):
        merge_models(_cfg(out, method="ties", models=[family["a"]]))
    with pytest.raises(MergeError, match="at least 2 model"):
        merge_models(_cfg(out, method="model_stock", base_model=family["base"], models=[family["a"]]))
    with pytest.raises(MergeError, match="takes no weights"):
        merge_models(_cfg(out, method="model_stock", base_model=family["base"],
                          models=[{"path": str(family["a"]), "weight": 2.0}, {"path": str(family["b"])}]))
    with pytest.raises(MergeError, match="positive weights"):
        merge_models(_cfg(out, method="ties", base_model=family["base"],
                          models=[{"path": str(family["a"]), "weight": -1.0}]))
    with pytest.raises(MergeError, match="is .or holds. the input model"):
        merge_models(_cfg(family["a"], method="linear", models=[family["a"], family["b"]], overwrite=True))
    with pytest.raises(MergeError, match="is .or holds. the input model"):
        merge_models(_cfg(family["a"].parent, method="linear", models=[family["a"], family["b"]], overwrite=True))
    out.mkdir()
    with pytest.raises(MergeError, match="already exists"):
        merge_models(_cfg(out, method="linear", models=[family["a"], family["b"]]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "model_stock", "modles": []}))
    with pytest.raises(ConfigError, match="did you mean 'models'"):
        load_config(MergeConfig, bad)


# ---------------------------------------------------------------------------------------------- atomic output


def test_interrupted_merge_leaves_nothing_at_the_output_path(family, tmp_path, monkeypatch):
    """An exception half-way (after a few tensors were written) removes the temp folder; an existing output
    that was to be overwritten is left as it was."""
    calls = {"n": 0}
    real_write = ShardWriter.write

    def failing_write(self, name, data):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("interrupted")
        real_write(self, name, data)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    out = tmp_path / "merged"
    cfg = _cfg(out, method="model_stock", base_model=family["base"], models=[family["a"], family["b"]],
               chunk_mb=0.05, max_shard_size="200KB")
    with pytest.raises(KeyboardInterrupt):
        merge_models(cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    out.mkdir()
    (out / "keep.txt").write_text("previous model")
    calls["n"] = 0
    cfg.overwrite = True
    with pytest.raises(KeyboardInterrupt):
        merge_models(cfg)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_killed_merge_leaves_nothing_at_the_output_path(family, tmp_path):
    """SIGKILL mid-merge (no cleanup code runs): the output path does not exist; only the hidden
    ``.merged.tmp-<pid>`` folder is left beside it."""
    out = tmp_path / "merged"
    script = f"""
import os, signal
from novalign.merge import merge, MergeConfig, merge_models
real, n = merge._merge_tensor, [0]
def dying(*args):
    n[0] += 1
    if n[0] == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
merge._merge_tensor = dying
merge_models(MergeConfig(method="linear", models=[{{"path": {str(family['a'])!r}}}, {{"path": {str(family['b'])!r}}}],
                         output_dir={str(out)!r}, max_shard_size="100KB"))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=120, capture_output=True,
                          check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".merged.tmp-")
    assert any(leftovers[0].glob("model-*.safetensors")), "the kill came after some shards were written"


# ---------------------------------------------------------------------------------------------- learning-style


def test_merging_recovers_known_models(family, tmp_path):
    """Task Arithmetic with λ = 1 of one fine-tune reproduces it (up to fp32 rounding of b + (θ − b));
    Model Stock of two models with the same offset returns that model exactly (cos θ = 1 -> t = 1)."""
    merge_models(_cfg(tmp_path / "ta", method="task_arithmetic", base_model=family["base"], models=[family["a"]]))
    a = _state(family["a"])
    for name, value in _state(tmp_path / "ta").items():
        torch.testing.assert_close(value, a[name], rtol=0, atol=1e-6)
    twin = _variant(family["base"], tmp_path / "twin", a, shard_size="300KB")
    merge_models(_cfg(tmp_path / "ms", method="model_stock", base_model=family["base"], models=[family["a"], twin]))
    merged = _state(tmp_path / "ms")
    assert all(torch.equal(merged[k], a[k]) for k in a)


# Three "domains": token cycles over disjoint id ranges, 8 sequences of 24 tokens each.
DOMAIN_A = (torch.arange(8)[:, None] + torch.arange(24)[None]) % 40 + 300  # ids 300..339, counting up
DOMAIN_B = (torch.arange(8)[:, None] * 3 + torch.arange(24)[None] * 7) % 50 + 900  # ids 900..949, steps of 7
DOMAIN_C = (torch.arange(8)[:, None] * 5 + torch.arange(24)[None] * 3) % 60 + 1500  # ids 1500..1559, steps of 3


@pytest.fixture
def one_thread():
    """Tiny-model training is all small ops: one intra-op thread is faster, most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(start: Path, data: torch.Tensor, out: Path, steps: int) -> Path:
    """Adam at 3e-3 on one domain, full batch; the result saved beside the base's config and tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(start)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(input_ids=data, labels=data).loss.backward()
        opt.step()
        opt.zero_grad()
    return _variant(start, out, {k: v.detach().clone() for k, v in model.state_dict().items()})


@torch.no_grad()
def _losses(model_dir: Path, *domains: torch.Tensor) -> tuple[float, ...]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return tuple(model(input_ids=d, labels=d).loss.item() for d in domains)


def _mean_t(result) -> float:
    ratios = [t for t in result.statistics.values() if isinstance(t, float)]
    return sum(ratios) / len(ratios)


def test_merging_two_specialists_balances_them(tiny_model_dir, tmp_path, one_thread):
    """The seesaw effect the report merges against, in miniature. Two specialists trained from one base on
    domains A and B each get much better at their own domain and worse at the other. Task Arithmetic, Linear
    and TIES merges beat the base on both domains, and their worse domain is better than either specialist's
    worse domain.

    Model Stock, by design, does not combine *unrelated* specialists: their task vectors are nearly
    orthogonal, cos θ ≈ 0 gives t ≈ 0, and the merge stays next to the base (the next test shows it working
    on checkpoints that share a training stage, as the report's do)."""
    spec_a = _train(tiny_model_dir, DOMAIN_A, tmp_path / "spec_a", steps=30)
    spec_b = _train(tiny_model_dir, DOMAIN_B, tmp_path / "spec_b", steps=30)
    base, a, b = (_losses(d, DOMAIN_A, DOMAIN_B) for d in (tiny_model_dir, spec_a, spec_b))
    assert a[0] < base[0] - 1 and b[1] < base[1] - 1  # each specialist learned its own domain...
    assert a[1] > base[1] and b[0] > base[0]  # ...and got worse at the other one (the seesaw)
    worst_specialist = min(max(a), max(b))
    for method, extra in [("task_arithmetic", {}), ("linear", {}), ("ties", {"density": 0.5})]:
        out = tmp_path / method
        merge_models(_cfg(out, method=method, base_model=tiny_model_dir, models=[spec_a, spec_b], **extra))
        merged = _losses(out, DOMAIN_A, DOMAIN_B)
        assert merged[0] < base[0] and merged[1] < base[1], (method, merged, base)
        assert max(merged) < worst_specialist, (method, merged, a, b)
    result = merge_models(_cfg(tmp_path / "ms", method="model_stock", base_model=tiny_model_dir,
                               models=[spec_a, spec_b]))
    assert _mean_t(result) < 0.4
    merged = _losses(tmp_path / "ms", DOMAIN_A, DOMAIN_B)
    assert all(abs(m - x) < 0.5 for m, x in zip(merged, base)), (merged, base)


def test_model_stock_balances_checkpoints_that_share_a_stage(tiny_model_dir, tmp_path, one_thread):
    """As in the report, the checkpoints come from one pipeline: a shared stage (domain C), then each
    specializes (A or B) and partly forgets C. Their task vectors share the first stage's direction, Model
    Stock's t is large, and the merge's worst domain of A and B is better than either specialist's."""
    shared = _train(tiny_model_dir, DOMAIN_C, tmp_path / "shared", steps=30)
    spec_a = _train(shared, DOMAIN_A, tmp_path / "spec_a", steps=10)
    spec_b = _train(shared, DOMAIN_B, tmp_path / "spec_b", steps=10)
    base, a, b = (_losses(d, DOMAIN_A, DOMAIN_B, DOMAIN_C) for d in (tiny_model_dir, spec_a, spec_b))
    result = merge_models(_cfg(tmp_path / "ms", method="model_stock", base_model=tiny_model_dir,
                               models=[spec_a, spec_b]))
    merged = _losses(tmp_path / "ms", DOMAIN_A, DOMAIN_B, DOMAIN_C)
    assert _mean_t(result) > 0.5
    assert all(m < x for m, x in zip(merged, base)), (merged, base)  # better than the base on all three
    assert max(merged[:2]) < min(max(a[:2]), max(b[:2])), (merged, a, b)
