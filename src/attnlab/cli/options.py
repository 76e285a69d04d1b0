"""Option values every command group reads the same way: integer lists and output folders."""

from __future__ import annotations

from pathlib import Path
from typing import overload

from attnlab.errors import ConfigError


def int_list(field: str, text: str) -> list[int]:
    """Comma-separated positive integers, as ``--lengths 64,128,256``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(field, text, "expected comma-separated integers, e.g. 64,128,256") from None
    if not values or min(values) < 1:
        raise ConfigError(field, text, "expected positive integers")
    return values


def float_list(field: str, text: str) -> list[float]:
    """Comma- (or space-) separated numbers, as ``--coefs 0,0.5,1,2``."""
    out = []
    for item in (s for s in text.replace(" ", ",").split(",") if s):
        try:
            out.append(float(item))
        except ValueError:
            raise ConfigError(field, item, "not a number", "a list like 0,0.5,1,2") from None
    if not out:
        raise ConfigError(field, text, "no values given", "a list like 0,0.5,1,2")
    return out


@overload
def output_folder(field: str, path: Path) -> Path: ...
@overload
def output_folder(field: str, path: None) -> None: ...
def output_folder(field: str, path: Path | None) -> Path | None:
    """A folder to write into: it may not exist yet (it is created), but it must not be a file.

    Checked before the work starts, so that a sweep of minutes does not fail at its last step.
    """
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(field, str(path), "is a file", "a folder (created when missing)")
    return path
