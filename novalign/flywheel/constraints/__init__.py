"""Instruction-following data (report section 4.1, Figure 5) on the constraint library of
:mod:`novalign.eval.constraints`: attribute detection and coverage (:mod:`.attributes`), constraint expansion
(:mod:`.expansion`), response reversal (:mod:`.reversal`), system messages (:mod:`.sysmsg`) and textbook
responses (:mod:`.textbook`). The library's names are re-exported here for convenience."""

from novalign.eval.constraints import (
    REGISTRY, ConstraintError, ConstraintType, Param, check, check_all, constraint_reward, describe, expressed, get,
    instance, matching_types, validate_params,
)

__all__ = ["REGISTRY", "ConstraintError", "ConstraintType", "Param", "check", "check_all", "constraint_reward",
           "describe", "expressed", "get", "instance", "matching_types", "validate_params"]
