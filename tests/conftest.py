import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_llama(seed: int = 0, layers: int = 2, vocab: int = 97, attn: str = "sdpa"):
    """A random-init Llama with GQA and the default config (use_cache=True, as a user's checkpoint has it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny model + tokenizer directory made by `novalign init-model`'s function (shared, read-only)."""
    from novalign.models.tiny import init_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-base"
    init_tiny_model(out, seed=0)
    return out


@pytest.fixture
def python_exe() -> str:
    return sys.executable


from memorized_model import memorized_model  # noqa: E402,F401  session fixture: a tiny model that says given replies
