"""What every trainer does before and after :func:`novalign.train.loop.train`, written once.

Before: pick the device, join the process group under torchrun, seed, create ``output_dir`` and record
the resolved config in it; load-time model adaptation (no KV cache, LoRA, grouped gradient
checkpointing). After: under FSDP gather the full weights onto rank 0, drop the checkpointing wrappers, and
write ``<output_dir>/model`` and ``summary.json``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from novalign.config import ModelConfig, dump_config
from novalign.data.io import write_json_atomic
from novalign.models.checkpointing import (
    decoder_layers,
    enable_multi_layer_checkpointing,
)
from novalign.train import dist as D
from novalign.train.engine import autocast_factory
from novalign.train.loop import LoopResult, uses_fsdp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def adapt_model(model: nn.Module, model_cfg: ModelConfig, device: torch.device, task_type: str = "CAUSAL_LM") -> nn.Module:
    """No KV cache, LoRA adapters and gradient checkpointing as configured; shared by every trainer.
    ``task_type`` is peft's ("SEQ_CLS" keeps a reward model's new head fully trainable)."""
    model.config.use_cache = False
    if model_cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = model_cfg.lora
        model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type=task_type),
        )
    gc = model_cfg.gradient_checkpointing
    if gc != "off":
        k = auto_group_size(model) if gc == "auto" else int(gc)
        enable_multi_layer_checkpointing(model, k)
    return model.to(device)


def auto_group_size(model: nn.Module, tokens: int = 512) -> int:
    """The report's k = sqrt(num_layers / n), with n measured on one decoder layer of this model."""
    from novalign.models.checkpointing import (
        measure_activations_per_layer,
        optimal_group_size,
    )

    layers = decoder_layers(model)
    cfg = model.config
    hidden = torch.randn(1, tokens, cfg.hidden_size, requires_grad=True)
    pos = torch.arange(tokens).unsqueeze(0)
    rotary = model.get_decoder().rotary_emb
    n = measure_activations_per_layer(
        layers[0],
        cfg.hidden_size,
        {"hidden_states": hidden, "position_embeddings": rotary(hidden, pos), "position_ids": pos, "attention_mask": None},
        tokens,
    )
    return optimal_group_size(len(layers), n)


@dataclass
class Session:
    device: torch.device
    info: D.DistInfo
    out: Path
    cfg: Any  # a stage config with .output_dir, .model and .train

    @property
    def fsdp(self) -> bool:
        return uses_fsdp(self.cfg.train, self.info, self.device)

    def autocast(self) -> Callable:
        """The loop's precision rule for forwards outside it (e.g. reference log-probs on an unsharded model)."""
        return autocast_factory(self.cfg.train, self.device)


def _check_resume(cfg: Any, out: Path) -> dict:
    """The run's data fingerprint, after refusing to resume checkpoints of another config or data
    (:mod:`novalign.train.resume_guard`)."""
    from novalign.train.resume_guard import check_resume
    from novalign.train.state import latest_checkpoint

    resuming = bool(getattr(cfg.train, "resume", True)) and latest_checkpoint(out / "checkpoints") is not None
    return check_resume(out, cfg.model_dump(mode="json"), resuming, bool(getattr(cfg.train, "resume_changed", False)))


def start(cfg: Any) -> Session:
    """Device, process group, seeds, ``output_dir`` with ``config.yaml``."""
    device = pick_device(cfg.train.device)
    info = D.init_distributed(device.type)
    if info.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    seed_everything(cfg.train.seed)
    out = Path(cfg.output_dir)
    inputs = _check_resume(cfg, out)  # every rank, before rank 0 rewrites config.yaml
    D.barrier(info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
        write_json_atomic(out / "inputs.json", inputs)
    session = Session(device, info, out, cfg)
    if cfg.model.lora is not None and session.fsdp:
        raise ValueError("LoRA under FSDP is not supported yet: use train.distributed=ddp (adapters are small)")
    return session


def finish(
    session: Session, result: LoopResult, model: nn.Module, tokenizer: Any, load_fresh: Callable[[], nn.Module],
    summary: dict, console_print: Callable[[str], None] = print,
) -> None:
    """Write ``<output_dir>/model`` (a Hugging Face directory) and ``summary.json``, then leave the group.

    Under FSDP the trained weights are gathered (a collective) and loaded into ``load_fresh()``, an
    unsharded copy, on rank 0.
    """
    from novalign.models.load import save_pretrained_dir

    if session.fsdp:
        full, _ = D.gather_state(result.module, None, trainable_only=False)
        if session.info.is_main:
            model = load_fresh()
            model.load_state_dict({k.removeprefix("lm."): v for k, v in full.items()}, strict=True)
    if session.info.is_main:
        enable_multi_layer_checkpointing(model, 0)
        save_pretrained_dir(model, tokenizer, session.out / "model")
        summary = {"steps": result.state.step, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
                   **summary, "model_dir": str(session.out / "model")}
        write_json_atomic(session.out / "summary.json", summary)
        console_print(f"model saved to {session.out / 'model'}")
    D.barrier(session.info)
    D.shutdown(session.info)
