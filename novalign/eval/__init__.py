"""Evaluation: verifiable-instruction checks (IFEval), benchmark metrics (CFBench, SysBench, FB-Bench, pass
rate, GSB, pass@k) and the code sandbox (``novalign.eval.sandbox``).

The verifiers are plain functions, so RL rewards reuse them unchanged
(``novalign.eval.ifeval.INSTRUCTIONS[id](response, **kwargs)`` or :func:`ifeval_reward`).
"""

from novalign.eval.ifeval import (
    INSTRUCTIONS,
    IFEvalExample,
    PromptResult,
    check_instruction,
    evaluate,
    evaluate_example,
    ifeval_reward,
    loose_variants,
    read_ifeval_inputs,
    read_responses,
)
from novalign.eval.metrics import ifeval_accuracy, pass_at_k

__all__ = [
    "INSTRUCTIONS",
    "IFEvalExample",
    "PromptResult",
    "check_instruction",
    "evaluate",
    "evaluate_example",
    "ifeval_accuracy",
    "ifeval_reward",
    "loose_variants",
    "read_ifeval_inputs",
    "pass_at_k",
    "read_responses",
]
