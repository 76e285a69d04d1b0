"""A small generic registry: names → factories, each with a capability record.

Compatibility is data, not scattered asserts: every entry says what it supports, and
:func:`Registry.check` turns an unsupported request into a :class:`~attnlab.errors.ConfigError`
naming the field, the value and the entries that would work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from attnlab.errors import ConfigError

T = TypeVar("T")

BACKENDS = ("reference", "sdpa")


@dataclass(frozen=True)
class Capabilities:
    """What a registry entry supports.

    ``row_stochastic``: every row of the weights is non-negative and sums to 1.
    ``signed``: weights may be negative.
    ``backends``: ways to compute it (``reference`` always; ``sdpa`` for fused softmax).
    ``score_mod``: (normalisers, heads) honours a position's score_mod (ALiBi, T5 bias).
    ``needs_score_mod``: (positions) acts through a score_mod, so it needs a mechanism that honours one.
    ``kernel``: (normalisers) computes attention from q and k itself (kernel / linear attention), not from
    the scores, so it needs heads that leave the computation to it (``kernel_ok``).
    ``kernel_ok``: (heads) can host a kernel normaliser (false for heads with their own ``attend``).
    ``owns_attention``: (positions) computes attention itself in ``attend`` from q·k scores (2D-TPE), so it
    needs a score normaliser (not ``kernel``) and heads that leave the computation to it (``kernel_ok``).
    """

    causal: bool = True
    non_causal: bool = True
    cross: bool = True
    kv_cache: bool = True
    row_stochastic: bool = False
    signed: bool = False
    backends: tuple[str, ...] = ("reference",)
    score_mod: bool = True
    needs_score_mod: bool = False
    kernel: bool = False
    kernel_ok: bool = True
    owns_attention: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    capabilities: Capabilities
    summary: str = ""
    paper: str = ""
    params: type | None = None  # a pydantic model validating the entry's keyword arguments
    example: dict[str, Any] = field(default_factory=dict)  # arguments that make a small working instance
    module: str = ""  # the module that defined the factory
    plugin: str = ""  # the plugin (a .py file's path or a module name) being imported when it registered; "" if none

    @property
    def builtin(self) -> bool:
        """Whether the entry is one of attnlab's own (defined in a module of the ``attnlab`` package)."""
        return self.module.startswith("attnlab.")

    @property
    def origin(self) -> str:
        """What to import to register this entry again: its plugin, else its module."""
        return self.plugin or self.module


_REGISTRIES: list[Registry[Any]] = []
_LOADING: list[str] = []  # the plugins being imported (``loading``), innermost last


def registries() -> list[Registry[Any]]:
    """Every registry created so far (each axis's, the feature maps', the tasks'), in creation order."""
    return list(_REGISTRIES)


@contextmanager
def loading(plugin: str) -> Iterator[None]:
    """Entries registered inside this block (by modules outside ``attnlab``) remember ``plugin`` as their origin."""
    _LOADING.append(plugin)
    try:
        yield
    finally:
        _LOADING.pop()


class Registry(Generic[T]):
    """Names → entries. ``kind`` is the config field that selects an entry (used in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        _REGISTRIES.append(self)

    def register(
        self,
        name: str,
        *,
        summary: str = "",
        paper: str = "",
        params: type | None = None,
        example: dict[str, Any] | None = None,
        **capabilities: Any,
    ) -> Callable[[T], T]:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice (first by {self._entries[name].origin})")
        caps = Capabilities(**capabilities)

        def decorate(factory: T) -> T:
            module = str(getattr(factory, "__module__", "") or "")
            plugin = _LOADING[-1] if _LOADING and not module.startswith("attnlab.") else ""
            self._entries[name] = Entry(
                name, factory, caps, summary, paper, params, dict(example or {}), module=module, plugin=plugin
            )
            return factory

        return decorate

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.kind, name, f"unknown {self.kind}", self.names()) from None

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def capabilities(self, name: str) -> Capabilities:
        return self.entry(name).capabilities

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def supporting(self, capability: str) -> list[str]:
        return [e.name for e in self.entries() if getattr(e.capabilities, capability)]

    def check(self, name: str, capability: str, use: str, field: str | None = None) -> None:
        """Reject ``name`` if it lacks ``capability`` (``check("alibi", "cross", "cross-attention")``)."""
        if not getattr(self.capabilities(name), capability):
            raise ConfigError(
                field or self.kind,
                name,
                f"does not support {use}",
                self.supporting(capability),
            )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
