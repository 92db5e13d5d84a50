"""The constraint library (report section 4.1): typed, described constraint types with deterministic validators --
IFEval's 25 verifiers reused (:mod:`.ifeval_types`) and CFBench-style types they lack (:mod:`.cfbench_types`) --
in one registry (:mod:`.library`) that data synthesis (:mod:`novalign.flywheel.constraints`), RL rewards (the
``constraints`` reward type) and evaluation (:mod:`.evaluate`, ``novalign data constraints --check``) share."""

from novalign.eval.constraints.library import (
    REGISTRY, ConstraintError, ConstraintType, Param, check, check_all, constraint_reward, describe, expressed, get,
    instance, matching_types, validate_params,
)

__all__ = ["REGISTRY", "ConstraintError", "ConstraintType", "Param", "check", "check_all", "constraint_reward",
           "describe", "expressed", "get", "instance", "matching_types", "validate_params"]
