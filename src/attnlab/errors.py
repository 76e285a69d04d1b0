"""Errors a user can act on: every message names the field, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration was rejected. The message is one line: ``field: problem (allowed: ...)``."""

    def __init__(self, field: str, value: Any, problem: str, allowed: Iterable[Any] | str | None = None):
        self.field = field
        self.value = value
        self.problem = problem
        self.root = ""  # the config class the field path starts at, when raised by a config's __init__
        if allowed is None:
            self.allowed = None
        elif isinstance(allowed, str):
            self.allowed = allowed
        else:
            self.allowed = ", ".join(str(a) for a in allowed)
        message = f"{field}={value!r}: {problem}"
        if self.allowed is not None:
            message += f" (allowed: {self.allowed})"
        super().__init__(message)
