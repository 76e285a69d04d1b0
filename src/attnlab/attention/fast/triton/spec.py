"""Which Triton kernel computes a chunked rule, and with which numbers (no triton import: the dispatch may ask
without triton installed).

The chunked backend's rules (``attnlab.attention.fast.chunked``) already carry every parameter of their
normaliser (sigmoid's bias, LSSA's log d and ε, LSSAR's power and free rows, clipped softmax's γ and ζ), so a
normaliser's ``chunked_rule()`` is also what selects and parameterises its Triton kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnlab.attention.fast.chunked import (
    ClippedSoftmaxRule,
    PointwiseRule,
    ReweightedSoftplusRule,
    Rule,
    SoftmaxRule,
    SoftplusRule,
)

# kernel rule ids (``common`` makes them triton constexprs)
SIGMOID, SOFTMAX, COG, LSSA, LSSAR, CLIPPED = range(6)
RULE_NAMES = ("sigmoid", "softmax", "cog", "lssa", "lssar", "clipped_softmax")
SUPPORTED = (
    "sigmoid (PointwiseRule('sigmoid')), softmax and cog (SoftmaxRule without softcap), lssa, lssar, clipped_softmax"
)
MAX_INT_POWER = 64  # whole powers up to this are computed by repeated products (exact to a few ulps)


@dataclass(frozen=True)
class KernelSpec:
    """One rule's kernel: its id, four parameters (meaning per rule: see ``kernels``) and its compile-time flags."""

    rule: int
    params: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    length_scale: bool = False
    p_int: int = 0  # LSSAR: the power p when a whole number in [1, MAX_INT_POWER], else 0 (exp2 / log2)
    p1_int: int = 0  # the same for p − 1 (the backward's slope)

    @property
    def name(self) -> str:
        return RULE_NAMES[self.rule]


def _whole(p: float) -> int:
    return int(p) if float(p).is_integer() and 1 <= p <= MAX_INT_POWER else 0


def kernel_spec(rule: Rule) -> KernelSpec:
    """The kernel of a chunked ``rule``; a one-line ValueError naming the rule when there is none."""
    if isinstance(rule, PointwiseRule) and rule.kind == "sigmoid" and rule.row_scale is None:
        return KernelSpec(SIGMOID, (float(rule.bias), 0.0, 0.0, 0.0))
    if isinstance(rule, SoftmaxRule) and rule.softcap is None:
        return KernelSpec(COG if rule.signed else SOFTMAX)
    if isinstance(rule, ReweightedSoftplusRule):
        log_d = math.log(rule.d_head) if rule.length_scale else 0.0
        params = (log_d, float(rule.eps), float(rule.power), float(rule.free_rows))
        return KernelSpec(LSSAR, params, rule.length_scale, _whole(rule.power), _whole(rule.power - 1))
    if isinstance(rule, SoftplusRule):
        log_d = math.log(rule.d_head) if rule.length_scale else 0.0
        return KernelSpec(LSSA, (log_d, float(rule.eps), 0.0, 0.0), rule.length_scale)
    if isinstance(rule, ClippedSoftmaxRule):
        return KernelSpec(CLIPPED, (float(rule.gamma), float(rule.zeta), 0.0, 0.0))
    raise ValueError(f"rule={describe(rule)} has no Triton kernel (allowed: {SUPPORTED})")


def describe(rule: Rule) -> str:
    """A rule as one short string for error messages."""
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(rule).items() if not callable(v))
    return f"{type(rule).__name__}({fields})"
