"""The vLLM rollout switch as far as it runs without a GPU: config, the missing-vLLM error, the weight stream.

vLLM itself (generation, ``load_weights`` into a live engine) is not installed here and is not faked: those
paths of :class:`~novalign.train.rl.rollout.VLLMRollout` are untested in this suite.
"""

import importlib.util

import pytest
import torch
from rl_helpers import rl_config, write_prompts

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")


def test_rollout_engine_option(tmp_path):
    from novalign.config import ConfigError, GRPOConfig, PPOConfig, load_config

    assert GRPOConfig().rollout.engine == "hf" and PPOConfig().rollout.engine == "hf"
    cfg = PPOConfig.model_validate({"rollout": {"engine": "vllm", "vllm_args": {"gpu_memory_utilization": 0.3}}})
    assert cfg.rollout.engine == "vllm" and cfg.rollout.vllm_args == {"gpu_memory_utilization": 0.3}
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  engine: sglang\n")
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(GRPOConfig, path)


def test_hf_engine_refuses_vllm_args(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from novalign.config import GRPORolloutConfig
    from novalign.train.rl.rollout import HFRollout, make_rollout_engine

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = make_rollout_engine(GRPORolloutConfig(batch_size=5), model, tok, str(tiny_model_dir), pack_tokens=64)
    assert isinstance(engine, HFRollout) and (engine.batch_size, engine.pack_tokens) == (5, 64)
    with pytest.raises(ValueError, match="rollout.vllm_args is set but rollout.engine is 'hf'"):
        make_rollout_engine(GRPORolloutConfig(vllm_args={"dtype": "bfloat16"}), model, tok, str(tiny_model_dir))


@NO_VLLM
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_vllm_engine_without_vllm_names_the_option(tiny_model_dir, tmp_path, stage):
    """Both trainers, rollout.engine: vllm on a machine without vLLM: an ImportError that names the option and
    both fixes, raised while setting up (before any rollout or checkpoint)."""
    from novalign.train.grpo import run_grpo
    from novalign.train.ppo import run_ppo

    out = tmp_path / "run"
    cfg = rl_config(stage, tiny_model_dir, out, write_prompts(tmp_path / "p.jsonl"), rollout={"engine": "vllm"})
    with pytest.raises(ImportError, match=r"rollout.engine: vllm needs vLLM .*pip install vllm.*rollout.engine: hf"):
        (run_grpo if stage == "grpo" else run_ppo)(cfg, console_print=lambda *_: None)
    assert not (out / "checkpoints").exists()


class _Wrapped(torch.nn.Module):
    """Names its child ``module`` as DDP does (state_dict keys ``module.*``)."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner


def test_policy_weight_stream_is_the_policy_state(tiny_model_dir):
    """(name, tensor) pairs equal to the policy's state_dict under its HF names -- also through a DDP-style
    ``module.`` wrapper and torch.compile's ``_orig_mod.`` -- detached, optionally cast (floats only), and read
    when iterated, so a stream taken after an optimizer step carries the new weights."""
    from transformers import AutoModelForCausalLM

    from novalign.train.rl.rollout import policy_weight_stream

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for wrapped in (model, _Wrapped(model), torch.compile(model)):
        pairs = list(policy_weight_stream(wrapped))
        assert [name for name, _ in pairs] == list(state)
        assert all(torch.equal(t, state[name]) and not t.requires_grad for name, t in pairs)
    half = dict(policy_weight_stream(model, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    assert torch.equal(half["lm_head.weight"], state["lm_head.weight"].to(torch.bfloat16))

    stream = policy_weight_stream(model)  # lazy: nothing is read yet
    loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after = dict(stream)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(after[name], model.state_dict()[name]) and not torch.equal(after[name], state[name])
