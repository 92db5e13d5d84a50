"""The seeded demo world of ``novalign run``: checkable tasks of six capabilities and a pretraining corpus."""

from novalign.world.checkers import passes, score
from novalign.world.generator import build_world, few_shot_prompt, write_world
from novalign.world.tasks import CAPABILITIES

__all__ = ["CAPABILITIES", "build_world", "few_shot_prompt", "passes", "score", "write_world"]
