"""The base of every config: :class:`Strict` (unknown keys are errors) and :class:`ConfigError`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and key."""


class Strict(BaseModel):
    """Base for all configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
