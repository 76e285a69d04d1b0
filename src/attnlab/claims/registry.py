"""Every claim: one module per paper in ``attnlab.claims.papers``, each defining ``PAPER`` and ``CLAIMS`` (modules
whose name starts with an underscore are shared helpers)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from attnlab.claims.base import Claim
from attnlab.errors import ConfigError


@cache
def all_claims() -> dict[str, Claim]:
    """Claim name → claim, in the order of the paper modules' names then each module's list."""
    from attnlab.claims import papers

    claims: dict[str, Claim] = {}
    for info in sorted(pkgutil.iter_modules(papers.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        for claim in importlib.import_module(f"{papers.__name__}.{info.name}").CLAIMS:
            if claim.name in claims:
                raise ValueError(f"claim {claim.name!r} is defined twice (in {info.name} and before)")
            claims[claim.name] = claim
    return claims


def select(names: list[str] | None) -> list[Claim]:
    """The claims named (every claim when none is), or a ConfigError naming the unknown one."""
    claims = all_claims()
    if not names:
        return list(claims.values())
    for name in names:
        if name not in claims:
            raise ConfigError("claim", name, "is not a claim", list(claims))
    return [claims[name] for name in names]
