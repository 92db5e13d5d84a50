"""Instruction-following data (report section 4.1, Figure 5): the constraint library with deterministic validators
(:mod:`.library`, IFEval's 25 in :mod:`.ifeval_types`, CFBench-style ones in :mod:`.cfbench_types`), attribute
detection (:mod:`.attributes`), constraint expansion (:mod:`.expansion`), response reversal (:mod:`.reversal`),
system messages (:mod:`.sysmsg`) and textbook responses (:mod:`.textbook`)."""

from novalign.flywheel.constraints import ifeval_types  # noqa: F401, I001 - registers IFEval's 25 first
from novalign.flywheel.constraints import cfbench_types  # noqa: F401 - then the CFBench-style ones
from novalign.flywheel.constraints.library import (
    REGISTRY, ConstraintError, ConstraintType, Param, check, check_all, constraint_reward, describe, expressed, get,
    instance, matching_types, validate_params,
)

__all__ = ["REGISTRY", "ConstraintError", "ConstraintType", "Param", "check", "check_all", "constraint_reward",
           "describe", "expressed", "get", "instance", "matching_types", "validate_params"]
