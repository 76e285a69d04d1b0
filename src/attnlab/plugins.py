"""User-defined entries: a Python file, a module, or an installed package (entry-point group ``attnlab.plugins``).

A plugin is anything that registers entries when imported (``NORMALISERS.register(...)`` and the other
registries). ``import_plugin`` imports one, once per process, and the entries it registers remember it
(``Entry.plugin``), so a run can record what its worker must import (``RunConfig.plugins``) and the worker can
import it before it builds the run (``import_needed``). Installed packages declare their module in the
``attnlab.plugins`` entry-point group; ``load_plugins`` imports them all, once, where the registries are used
(``load_sweep``, the workers, ``attnlab zoo``). Every failure is one line: what failed, where, and how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from attnlab.errors import ConfigError
from attnlab.registry import Entry, Registry, loading, registries

GROUP = "attnlab.plugins"
FILE_HINT = (
    "make the file readable at this path wherever runs are trained (the same checkout or a shared file system), "
    "or package its entries (docs/extending.md)"
)
MODULE_HINT = "install its package wherever runs are trained (pip install -e PACKAGE) or put its folder on PYTHONPATH"

_FILES: dict[str, ModuleType] = {}  # resolved path → module: a file is executed once per process
_ENTRY_POINTS: list[str] | PluginError | None = None  # load_plugins' result, or its error, once per process


class PluginError(ConfigError):
    """A plugin could not be imported or did not register what a run needs; the message is the whole line."""

    def __init__(self, field: str, value: Any, line: str):
        super().__init__(field, value, line)
        Exception.__init__(self, line)


def is_file(spec: str) -> bool:
    """Whether ``spec`` names a Python file (``…/my_attention.py``) rather than a module (``my_attention``)."""
    return spec.endswith(".py")


MAIN_HINT = (
    "define it in a file (a sweep file, a module, a package) that the workers import: an entry defined in __main__ "
    "without a file (a notebook, python -c) exists only in the driver"
)


def hint(spec: str) -> str:
    """How to make ``spec`` importable where a run is trained."""
    if spec in ("__main__", "__mp_main__"):
        return MAIN_HINT
    return FILE_HINT if is_file(spec) else MODULE_HINT


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_plugin(spec: str) -> ModuleType:
    """Import a module by name or a ``.py`` file by path, once per process; what it registers remembers ``spec``.

    A file is imported as a module of its own (in ``sys.modules``, so pydantic and pickle find its classes) with
    its folder on ``sys.path``, so it can import the modules beside it, as ``python FILE`` would.
    """
    if not is_file(spec):
        with loading(spec):
            return importlib.import_module(spec)
    path = Path(spec).resolve()
    key = str(path)
    if key in _FILES:
        return _FILES[key]
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"attnlab_plugin_{stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    sys.modules[name] = module
    try:
        with loading(key):
            module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _FILES[key] = module
    return module


def load_plugins() -> list[str]:
    """Import every installed plugin (entry-point group ``attnlab.plugins``) once; their module names.

    A plugin that fails to import is a one-line ``PluginError`` (raised again on every later call).
    """
    global _ENTRY_POINTS
    if isinstance(_ENTRY_POINTS, PluginError):
        raise _ENTRY_POINTS
    if _ENTRY_POINTS is not None:
        return list(_ENTRY_POINTS)
    loaded: list[str] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "its package"
        try:
            with loading(ep.module):
                ep.load()
        except Exception as exc:
            _ENTRY_POINTS = PluginError(
                "plugin",
                ep.name,
                f"plugin {ep.name!r} ({ep.value}, entry point of {dist}) failed to import: {first_line(exc)}; "
                f"fix it or uninstall it (pip uninstall {dist})",
            )
            raise _ENTRY_POINTS from None
        loaded.append(ep.module)
    _ENTRY_POINTS = loaded
    return list(loaded)


def entry_key(registry: Registry[Any], name: str) -> str:
    """``normaliser:softmax1``: how a run names one entry of one registry."""
    return f"{registry.kind}:{name}"


def registry_of(kind: str) -> Registry[Any] | None:
    """The registry whose ``kind`` is ``kind`` (``normaliser``, ``heads``, ``position``, ``feature_map``, ``task``)."""
    return next((r for r in registries() if r.kind == kind), None)


def origin_of(entry: Entry[Any]) -> str:
    """What a worker imports to get ``entry``: its plugin, else its module (a script's own file for ``__main__``)."""
    if entry.plugin:
        return entry.plugin
    if entry.module in ("__main__", "__mp_main__"):
        main_file = getattr(sys.modules.get(entry.module), "__file__", None)
        if main_file:
            return str(Path(main_file).resolve())
    return entry.module


def needed(entries: Iterable[tuple[Registry[Any], str]]) -> dict[str, str]:
    """``{"normaliser:softmax1": origin}`` for the entries that are not attnlab's own (unknown names are left out:
    the config's validation reports them)."""
    out: dict[str, str] = {}
    for registry, name in entries:
        if name in registry:
            entry = registry.entry(name)
            if not entry.builtin:
                out[entry_key(registry, name)] = origin_of(entry)
    return out


def import_needed(plugins: Mapping[str, str], where: str) -> None:
    """Import what a run needs (``RunConfig.plugins``) and check every entry it names is registered.

    ``where`` names the process (``the worker on HOST (pid N)``). Failures are one line: the entry, its registry,
    the module or file it came from, what went wrong and how to make it importable.
    """
    for origin in sorted(set(plugins.values())):
        try:
            import_plugin(origin)
        except Exception as exc:
            key = min(k for k, v in plugins.items() if v == origin)
            kind, name = key.split(":", 1)
            raise PluginError(
                kind,
                name,
                f"{kind} {name!r} comes from {origin}, which {where} cannot import ({first_line(exc)}): {hint(origin)}",
            ) from None
    for key, origin in sorted(plugins.items()):
        kind, name = key.split(":", 1)
        registry = registry_of(kind)
        if registry is None or name not in registry:
            raise PluginError(
                kind,
                name,
                f"{kind} {name!r} is not registered in {where} after importing {origin}, where it came from: "
                f"{hint(origin)}",
            )


def snapshot() -> set[str]:
    """Every registered entry as ``kind:name``."""
    return {entry_key(r, n) for r in registries() for n in r.names()}


def entries_of(spec: str) -> list[tuple[Registry[Any], Entry[Any]]]:
    """Import ``spec`` (a module name or a ``.py`` file) and return the entries it registered.

    The entries new since before the import, or, for a module imported earlier (an installed plugin), those whose
    origin is that module. For a module name, the entries defined in it or its submodules when there are any (so
    ``my_plugin.extra`` does not report what ``my_plugin`` itself registers on the way).
    """
    before = snapshot()
    import_plugin(spec)
    key = str(Path(spec).resolve()) if is_file(spec) else spec
    found = [
        (registry, entry)
        for registry in registries()
        for entry in registry.entries()
        if not entry.builtin
        and (entry_key(registry, entry.name) not in before or entry.plugin == key or entry.module == key)
    ]
    if not is_file(spec):
        own = [(r, e) for r, e in found if e.module == spec or e.module.startswith(spec + ".")]
        found = own or found
    return found
