"""End-to-end SFT through the CLI: learning, kill-and-resume identity, 2-process equivalence, errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT

DEMO = ROOT / "novalign" / "assets" / "demo_sft.jsonl"
DEMO_EVAL = ROOT / "novalign" / "assets" / "demo_sft_eval.jsonl"


def _write_config(path: Path, model_dir: Path, out: Path, **sections) -> Path:
    cfg = {
        "output_dir": str(out),
        "model": {"path": str(model_dir)},
        "data": {"train_files": [str(DEMO)], "max_length": 256},
        "packing": {"row_len": 256},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0},
        "train": {"epochs": 1, "grad_accum": 2, "progress": False, "tensorboard": False, "seed": 0},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(threads: int = 2) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _sft(config: Path, *overrides: str, check=True, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "novalign.cli", "sft", "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"sft failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_sft_learns_and_writes_a_loadable_model(tiny_model_dir, tmp_path):
    """A short run lowers the held-out loss, and the result loads with plain transformers."""
    out = tmp_path / "run"
    cfg = _write_config(
        tmp_path / "c.yaml", tiny_model_dir, out,
        data={"eval_files": [str(DEMO_EVAL)]}, train={"max_steps": 30, "grad_accum": 1, "eval_every": 30},
    )
    _sft(cfg, "train.tensorboard=true")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # ~7.4 -> ~5.4 on this seed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_loss"] < 0.8 * losses[0]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert any((out / "tensorboard").iterdir())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


def test_kill_and_resume_gives_identical_weights(tiny_model_dir, tmp_path):
    """SIGKILL a run right after a mid-run checkpoint, resume it, and get the same final weights,
    bit for bit, as an uninterrupted run (model, optimizer, scheduler, RNG and data position restored)."""
    steps = 60
    common = {"train": {"max_steps": steps, "save_every": 2, "keep_last": 2, "grad_accum": 1}, "model": {"lora": None}}
    ref_out, run_out = tmp_path / "ref", tmp_path / "killed"
    _sft(_write_config(tmp_path / "ref.yaml", tiny_model_dir, ref_out, **common))
    cfg = _write_config(tmp_path / "run.yaml", tiny_model_dir, run_out, **common)
    cmd = [sys.executable, "-m", "novalign.cli", "sft", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_out / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step-*")] if ckpts.exists() else []
        if any(int(p.name.split("-")[1]) >= 6 for p in done):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run_out / "model").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in ckpts.glob("step-*") if (p / "trainer_state.json").exists())
    assert killed_at < steps
    resumed = _sft(cfg)
    assert "resumed from" in resumed.stdout
    ref, got = _weights(ref_out), _weights(run_out)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    steps_logged = [json.loads(x)["step"] for x in (run_out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps_logged == list(range(1, steps + 1))


def test_half_written_checkpoint_is_never_picked(tmp_path):
    from novalign.train.state import TrainState, latest_checkpoint, save_checkpoint

    root = tmp_path / "checkpoints"
    save_checkpoint(root, TrainState(step=2), model_state={"w": torch.ones(2)}, optimizer_state=None,
                    scheduler_state=None, rank=0, is_main=True)
    (root / ".tmp-step-00000004").mkdir()  # a save killed before its rename
    (root / ".tmp-step-00000004" / "model.pt").write_bytes(b"partial")
    assert latest_checkpoint(root).name == "step-00000002"
    for step in (4, 6, 8):
        save_checkpoint(root, TrainState(step=step), model_state=None, optimizer_state=None,
                        scheduler_state=None, rank=0, is_main=True, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000006", "step-00000008"]


def _engine(tmp_path, max_grad_norm=1.0):
    from novalign.config import OptimConfig, TrainConfig
    from novalign.train.dist import DistInfo
    from novalign.train.engine import start_engine

    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1, bias=False)
    optim = OptimConfig(lr=0.1, weight_decay=0.0, warmup_ratio=0.0, schedule="linear", max_grad_norm=max_grad_norm)
    return start_engine(module, optim, TrainConfig(keep_last=5), total_steps=4, ckpt_root=tmp_path / "checkpoints",
                        info=DistInfo(), device=torch.device("cpu"), console_print=lambda *_: None)


def _engine_step(engine, step):
    engine.module.weight.grad = torch.tensor([[3.0, 4.0]]) * (step + 1)
    out = engine.step()
    engine.state.step += 1
    return out


def test_engine_step_clips_and_schedules_by_hand(tmp_path):
    """Gradient (3, 4): norm 5, clipped to norm 1 -> (0.6, 0.8). lr 0.1, linear decay over 4 steps: step 0 runs at
    0.1 and leaves 0.1 * (1 - 1/4) = 0.075. Adam's first step moves each weight by lr * g_hat / (|g_hat| + eps),
    i.e. by -0.1 in both coordinates whatever the gradient's size (clipping does not change its sign)."""
    engine = _engine(tmp_path)
    before = engine.module.weight.detach().clone()
    lr, norm = _engine_step(engine, 0)
    assert lr == pytest.approx(0.1) and norm == pytest.approx(5.0)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.075)
    torch.testing.assert_close(engine.module.weight.detach(), before - 0.1, atol=1e-6, rtol=0)
    assert engine.module.weight.grad is None  # zeroed for the next accumulation
    assert _engine(tmp_path / "off", max_grad_norm=None).step()[1] is None  # no clipping: no norm measured


def test_engine_resume_is_exact(tmp_path):
    """4 steps straight == 2 steps, save, a fresh engine resumed from that checkpoint, 2 more steps: the same weights
    bit for bit (Adam moments, schedule position and step counter all come back)."""
    straight = _engine(tmp_path / "a")
    for step in range(4):
        _engine_step(straight, step)
    first = _engine(tmp_path / "b")
    for step in range(2):
        _engine_step(first, step)
    first.save()
    resumed = _engine(tmp_path / "b")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-00000002" and resumed.state.step == 2
    for step in range(2, 4):
        _engine_step(resumed, step)
    assert torch.equal(resumed.module.weight, straight.module.weight)
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "sp"])
def test_two_processes_match_one_process(tiny_model_dir, tmp_path, mode):
    """torchrun with 2 CPU processes (gloo), grad_accum 1 == 1 process with grad_accum 2: the same
    effective batch of 2 micro-batches per step, the same token-mean gradient -- with the explicit
    gradient all-reduce ('ddp') and with FSDP2 sharding ('fsdp', which averages, hence world/N scaling).
    'sp': Ulysses sequence parallelism, both processes on the same rows (grad_accum 2), each with half of
    every row's tokens -- the all-to-alls, the pre-shifted labels and the summed gradients must give the
    single-process result exactly (removing the label shift or the all-to-all makes this fail)."""
    common = {"train": {"max_steps": 6}, "optim": {"lr": 1e-3, "warmup_ratio": 0.0}}
    one = _write_config(tmp_path / "one.yaml", tiny_model_dir, tmp_path / "one", **common)
    _sft(one, "train.grad_accum=2")
    two = _write_config(tmp_path / "two.yaml", tiny_model_dir, tmp_path / "two", **common)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "novalign.cli", "sft", "--config", str(two),
        *(["--set", "train.grad_accum=2", "--set", "train.distributed=ddp", "--set", "train.sequence_parallel=2"]
          if mode == "sp" else ["--set", "train.grad_accum=1", "--set", f"train.distributed={mode}"]),
        # under FSDP also group both layers into one checkpoint: the group must call its layers through
        # their hooks (FSDP2 all-gathers), and the result must not change
        "--set", f"model.gradient_checkpointing={2 if mode == 'fsdp' else 'off'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads=1), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    changed = 0
    base = load_file(tiny_model_dir / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)
        changed += not torch.equal(a[name], base[name])
    assert changed == len(a)  # the runs really trained every tensor
    la = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert la == pytest.approx(lb, rel=1e-4)


def test_lora_run_saves_merged_model_and_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    cfg = _write_config(tmp_path / "c.yaml", tiny_model_dir, out, train={"max_steps": 3})
    _sft(cfg, "model.lora={r: 4, alpha: 8}", "model.gradient_checkpointing=auto")
    assert (out / "model" / "adapter").is_dir()
    merged, base = _weights(out), load_file(tiny_model_dir / "model.safetensors")
    assert set(merged) == set(base)
    assert any(not torch.equal(merged[k], base[k]) for k in base)


def test_bad_input_errors_name_file_line_and_problem(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    data.write_text(good + "\n" + '{"messages": [oops\n' + json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
    cfg = _write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "out", data={"train_files": [str(data)]})
    proc = _sft(cfg, check=False)
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "JSON" in proc.stderr
    proc = _sft(cfg, "data.skip_invalid=true", "train.max_steps=1")
    assert "training data: skipped 2 invalid records" in proc.stdout
    assert "bad.jsonl:3" in proc.stdout


def test_config_errors_name_the_key(tmp_path):
    from novalign.config import ConfigError, SFTConfig, load_config

    p = tmp_path / "c.yaml"
    p.write_text("data:\n  trian_files: [a.jsonl]\n")
    with pytest.raises(ConfigError, match=r"data\.trian_files: unknown key \(did you mean 'data\.train_files'\?\)"):
        load_config(SFTConfig, p)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(SFTConfig, None, ["optim.lr=-1"])
    cfg = load_config(SFTConfig, None, ["train.epochs=2", "data.train_files=[x.jsonl]"])
    assert cfg.train.epochs == 2 and cfg.data.train_files == ["x.jsonl"] and cfg.optim.lr == 1e-5


def test_did_you_mean_reaches_into_lists_and_mappings():
    """merge.specialists is a list of sections: an unknown key in its entry 0 is matched against that section's
    keys; the same for a mapping of sections (LLMConfig.prices: model name -> PriceConfig)."""
    from novalign.config import ConfigError, LLMConfig, RecipeConfig, load_config

    with pytest.raises(ConfigError, match=r"merge\.specialists\.0\.fokus: unknown key \(did you mean "
                                          r"'merge\.specialists\.0\.focus'\?\)"):
        load_config(RecipeConfig, None, ["merge.specialists=[{name: a, fokus: [math]}]"])
    with pytest.raises(ConfigError, match=r"did you mean 'prices\.m\.prompt_per_million'"):
        load_config(LLMConfig, None, ["prices={m: {prompt_per_milion: 1.0}}"])


def test_set_overrides_reach_into_lists(tmp_path):
    """``--set suites.1.options.n=4`` edits the second entry of a list; an index past the end, a non-number
    index, or a key below a plain value is an error that names the path."""
    from novalign.config import ConfigError, EvalConfig, load_config

    p = tmp_path / "eval.yaml"
    p.write_text("models: [{name: m, responses: r.jsonl}]\n"
                 "suites: [{type: ifeval, data: a.jsonl}, {type: code, data: b.jsonl, options: {n: 1}}]\n")
    cfg = load_config(EvalConfig, p, ["suites.1.options.n=4", "suites.0.data=c.jsonl", "models.0.name=x"])
    assert cfg.suites[1].options == {"n": 4} and cfg.suites[0].data == "c.jsonl" and cfg.models[0].name == "x"
    with pytest.raises(ConfigError, match=r"'suites\.2' is not an entry of a list of 2"):
        load_config(EvalConfig, p, ["suites.2.type=math"])
    with pytest.raises(ConfigError, match=r"'suites\.first' is not an entry"):
        load_config(EvalConfig, p, ["suites.first.type=math"])
    with pytest.raises(ConfigError, match=r"'suites\.0\.data' is not a section"):
        load_config(EvalConfig, p, ["suites.0.data.x=1"])


def test_cli_help_lists_stages_and_config_options():
    env = _env()
    out = subprocess.run([sys.executable, "-m", "novalign.cli", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0 and "sft" in out.stdout and "init-model" in out.stdout
    out = subprocess.run([sys.executable, "-m", "novalign.cli", "sft", "--help-config"], capture_output=True, text=True,
                         env={**env, "COLUMNS": "200"}, cwd=ROOT)
    assert out.returncode == 0 and "packing.row_len" in out.stdout and "optim.lr" in out.stdout
