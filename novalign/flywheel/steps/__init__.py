"""The built-in steps; importing this package registers them (``novalign.flywheel.step.STEP_TYPES``)."""

from novalign.flywheel.steps import dedup, filters, llm, sampling  # noqa: F401
