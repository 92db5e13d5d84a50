"""``novalign run``: the whole recipe in one command.

* :mod:`.context` -- what a stage gets (:class:`RecipeContext`), stage keys, done markers, the recipe's models;
* :mod:`.stages` -- one function per stage and the table :data:`STAGES` (each stage one entry);
* :mod:`.runner` -- keys, skip / resume / ``--only`` / ``--from``: wiring only;
* :mod:`.report` -- ``report.md``, ``summary.json`` and charts, written with :mod:`novalign.eval.report`.

Imports point one way: runner -> stages -> report -> context.
"""

from novalign.recipe.context import RecipeContext, read_done, stage_key, stage_models
from novalign.recipe.runner import active_stages, compute_keys, plan_stages, run_recipe
from novalign.recipe.stages import STAGES, Stage

__all__ = ["RecipeContext", "STAGES", "Stage", "active_stages", "compute_keys", "plan_stages", "read_done",
           "run_recipe", "stage_key", "stage_models"]
