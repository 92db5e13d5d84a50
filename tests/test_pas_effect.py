"""Learning test: a tiny PAS model that learned to add "Answer in JSON." to data prompts raises a tiny main
model's JSON pass rate on held-out prompts that leave the requirement out (report sections 2.3, 4.6).

The small version of ``bench/pas_effect.py`` (see its docstring for the design): both models are trained
here by the real trainers (``run_sft`` for the main model, ``run_pas_train`` for the PAS model), the baseline
is measured in the same run, and the pass rate is IFEval's ``json_format`` check through ``ux_pass_rate``.
"""

from __future__ import annotations

import importlib.util

import torch

from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("pas_effect", ROOT / "bench" / "pas_effect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pas_raises_json_pass_rate_on_held_out_prompts(tmp_path):
    """Expected (seed 0, measured 0.0 -> 1.0): the main model answers the held-out data prompts in plain text
    (it answers JSON only when asked), the PAS model asks for JSON on them and not on the other categories,
    so with PAS the pass rate rises by at least 0.5 and GSB (with vs without) is clearly positive."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _bench().run(tmp_path, num_topics=30, held_out=8, main_steps=150, pas_steps=150, hidden=64)
    finally:
        torch.set_num_threads(threads)
    assert result["held_out_prompts"] == 24
    assert result["pass_rate_without_pas"] <= 0.25
    assert result["pass_rate_with_pas"] >= result["pass_rate_without_pas"] + 0.5
    assert result["pas_hint_rate"] >= 0.75 and result["pas_false_hint_rate"] <= 0.25
    assert result["plain_kept_with_pas"] >= 0.75  # PAS does not turn every answer into JSON
    assert result["gsb"]["score"] >= 0.5 and result["gsb"]["bad"] <= 2
