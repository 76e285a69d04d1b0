"""Import every module of a package so that its registry entries register themselves.

A new mechanism is one new file; no ``__init__`` needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, path: list[str]) -> list[str]:
    names = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
            names.append(info.name)
    return names
