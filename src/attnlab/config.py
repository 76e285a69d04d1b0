"""Typed, strict configs. Unknown keys are rejected; every error is one line naming the field,
the bad value and the allowed values (a :class:`~attnlab.errors.ConfigError`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from attnlab.errors import ConfigError


def _keys_at(model: type[BaseModel] | None, path: tuple[Any, ...]) -> list[str] | None:
    """The keys a (nested) config accepts at ``path``, or None when the path leaves the typed configs."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        model = field.annotation if field is not None else None  # type: ignore[assignment]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def _describe(err: dict[str, Any], prefix: str, model: type[BaseModel] | None = None) -> ConfigError:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "config")
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # raised by our own validators: keep its field path
        inner = cause.field.removeprefix(getattr(cause, "root", "") + ".")
        full = field if inner == loc.rsplit(".", 1)[-1] else f"{field}.{inner}" if inner else field
        return ConfigError(full, cause.value, cause.problem, cause.allowed)
    message = err.get("msg", "invalid").removeprefix("Value error, ")
    allowed = None
    if err.get("type") == "extra_forbidden":
        message = "unknown key"
        allowed = _keys_at(model, tuple(err.get("loc", ()))[:-1])
    elif err.get("type") == "literal_error":
        message = "not an allowed value"
        allowed = err.get("ctx", {}).get("expected")
    return ConfigError(field, err.get("input"), message, allowed)


def config_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> ConfigError:
    """The first problem of a pydantic ValidationError as a one-line ConfigError.

    ``model`` is the config class that was validated; with it, an unknown key lists the known ones.
    """
    return _describe(exc.errors()[0], prefix, model)


class StrictModel(BaseModel):
    """Frozen, unknown keys forbidden, one-line errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = config_error(exc, type(self).__name__, type(self))
            error.root = type(self).__name__  # so an enclosing config can re-root the field path
            raise error from None

    @classmethod
    def parse(cls, data: Any) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls.__name__, cls) from None

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()


def validate_args(registry: Any, name: str, args: dict[str, Any], field: str) -> dict[str, Any]:
    """Check an entry's keyword arguments against its params model; returns them normalised."""
    params_cls = registry.entry(name).params
    if params_cls is None:
        if args:
            raise ConfigError(field, args, f"{registry.kind} {name!r} takes no arguments", "{}")
        return {}
    try:
        return params_cls.model_validate(args).model_dump(exclude_unset=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ()))
        allowed = list(params_cls.model_fields)
        if err.get("type") == "extra_forbidden":
            raise ConfigError(f"{field}.{key}", err.get("input"), f"unknown argument of {name}", allowed) from None
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        raise ConfigError(f"{field}.{key}" if key else field, err.get("input"), msg) from None
