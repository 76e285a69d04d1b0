"""The benchmark's cases: every mechanism × backend it times, each a ``Case`` whose ``build(T)`` makes the call.

Inputs are q, k, v of shape [B=1, H=8, T, D=64], causal, float32. A case's parameters (a T5 table, sink logits)
are drawn from fixed seeds, so every backend of one mechanism computes the same function and the correctness
gate can compare them with attnlab's reference.

x-transformers (``pip install x-transformers==2.31.10``; lucidrains/x-transformers, ``x_transformers/attend.py``)
is compared like for like where it has the variant: softmax (``flash=True``, SDPA), ALiBi and T5 bias (its bias
modules, then SDPA with the T×T bias), soft-clamped logits, a learned sink logit per head, Cog's signed softmax,
and sigmoid (its ``Attend`` with ``custom_attn_fn=σ(s + b)``, the same bias as attnlab's; its own ``sigmoid=True``
has no bias). It has no sliding window, LSSA/LSSAR or clipped softmax. When it is not installed those cases are
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.attention import NORMALISERS, AttentionSite, attend_reference
from attnlab.attention.build import sdpa
from attnlab.errors import ConfigError

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
QUICK_LENGTHS = (64, 128)
HEADS, HEAD_DIM = 8, 64
SOFTCAP = 50.0  # Gemma 2's attention logit cap
WINDOW = 256
MODES = ("forward", "forward+backward")
XT_PIN = "x-transformers==2.31.10"

AttnFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Case:
    """One mechanism on one backend. ``build(T)`` returns ``fn(q, k, v) -> out`` with its parameters made."""

    mechanism: str
    backend: str
    build: Callable[[int], AttnFn]
    dense: bool = False  # materialises T×T tensors: skipped above dense_limit
    compiled: bool = False  # compiles on its first call at each T (flex)

    @property
    def name(self) -> str:
        return f"{self.mechanism}/{self.backend}"


def site(t: int) -> AttentionSite:
    return AttentionSite(d_model=HEADS * HEAD_DIM, n_heads=HEADS, causal=True, seq_len=t)


def normaliser(name: str, t: int, **args: Any) -> torch.nn.Module:
    entry = NORMALISERS.entry(name)
    return entry.factory(entry.params(**args), site(t))


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Build parameters (T5 table, sink logits) identically for every backend of a mechanism."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return fn()
    finally:
        torch.random.set_rng_state(state)


def position_mod(kind: str | None, t: int) -> tuple[Any, Any]:
    """(position module, score_mod) for None, "alibi" or "t5"."""
    if kind is None:
        return None, None
    from attnlab.position.alibi import ALiBi
    from attnlab.position.t5 import T5RelativeBias

    module = ALiBi(None, site(t)) if kind == "alibi" else seeded(lambda: T5RelativeBias(None, site(t)))
    return module, module.score_mod


def attnlab_case(mechanism: str, backend: str, norm: str, *, position: str | None = None, **args: Any) -> Case:
    """attnlab's normaliser ``norm`` on ``backend`` (reference, chunked, flex), with an optional position."""

    def build(t: int) -> AttnFn:
        module = normaliser(norm, t, **args)
        pos, make_mod = position_mod(position, t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            qp, kp, scale = module.prepare(q, k, None)
            kwargs = dict(causal=True, scale=scale, score_mod=make_mod() if make_mod else None)
            if backend == "reference":
                if hasattr(module, "attend"):  # kernel attention's quadratic reference
                    return module.attend(qp, kp, v, **kwargs).out
                return attend_reference(qp, kp, v, normaliser=module, **kwargs).out
            bias = pos.score_bias() if pos is not None else None  # the typed bias the SDPA forms and kernels apply
            if backend == "sdpa":
                return module.attend_sdpa(qp, kp, v, causal=True, scale=scale, bias=bias).out
            if backend == "chunked" and not hasattr(module, "attend"):  # the raw q, k: LSSA's kernel normalises them
                kwargs.update(bias=bias, raw_qk=(q, k))
            return getattr(module, f"attend_{backend}")(qp, kp, v, **kwargs).out

        return fn

    return Case(mechanism, backend, build, dense=backend == "reference", compiled=backend == "flex")


def window_case(backend: str) -> Case:
    """Softmax with a sliding window of ``WINDOW`` keys."""

    def build(t: int) -> AttnFn:
        module = normaliser("softmax", t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if backend == "sdpa":  # attnlab's SDPA path: a boolean T×T mask
                return sdpa(q, k, v, causal=True, scale=None, window=WINDOW)
            if backend == "reference":
                return attend_reference(q, k, v, normaliser=module, causal=True, window=WINDOW).out
            return getattr(module, f"attend_{backend}")(q, k, v, causal=True, window=WINDOW).out

        return fn

    return Case("softmax+window", backend, build, dense=backend == "reference", compiled=backend == "flex")


def sdpa_case() -> Case:
    def build(t: int) -> AttnFn:
        return lambda q, k, v: sdpa(q, k, v, causal=True, scale=None)

    return Case("softmax", "sdpa", build)


def sink_logits() -> Tensor:
    return seeded(lambda: torch.randn(HEADS, 1), seed=1)  # gpt-oss: one learned logit per head


def sinks_case(backend: str, kind: str = "logit") -> Case:
    """gpt-oss sinks (one learned logit per head, value zero), or ``kind="kv"``: one learned key/value per head."""

    def build(t: int) -> AttnFn:
        from attnlab.attention import HEADS as HEAD_REGISTRY

        entry = HEAD_REGISTRY.entry("sinks")
        heads = seeded(lambda: entry.factory(entry.params(n_sinks=1, kind=kind), site(t)), seed=1)
        if kind == "logit":
            heads.sink_logit = torch.nn.Parameter(sink_logits())
        else:
            heads.sink_v.data.copy_(seeded(lambda: torch.randn_like(heads.sink_v), seed=2))
        soft = normaliser("softmax", t)
        if backend == "reference":
            return lambda q, k, v: heads.attend(q, k, v, normaliser=soft, causal=True).out
        if backend == "sdpa":
            return lambda q, k, v: heads.attend_sdpa(q, k, v, normaliser=soft, causal=True).out
        from attnlab.attention.fast.flex import attend_with_sinks

        sinks = {"sink_logits": heads.sink_logit} if kind == "logit" else {}
        if kind == "kv":
            sinks = {"sink_keys": heads.sink_k, "sink_values": heads.sink_v}
        return lambda q, k, v: attend_with_sinks(q, k, v, **sinks, causal=True)[0]

    mechanism = "softmax+sinks" if kind == "logit" else "softmax+sinks_kv"
    return Case(mechanism, backend, build, dense=backend == "reference", compiled=backend == "flex")


DOCUMENT_FRACTIONS = (0.4, 0.25, 0.2, 0.15)  # packed documents: a run of ids per fraction of T


def documents_of(t: int) -> Tensor:
    """[1, T] document ids: runs of DOCUMENT_FRACTIONS of T (the last takes the remainder)."""
    lengths = [max(1, int(f * t)) for f in DOCUMENT_FRACTIONS[:-1]]
    lengths.append(max(0, t - sum(lengths)))
    ids = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])[:t]
    return ids[None]


def documents_case(backend: str) -> Case:
    """Causal softmax within packed documents: reference (dense), sdpa (one SDPA call per run length),
    sdpa-mask (SDPA with the boolean T×T mask)."""

    def build(t: int) -> AttnFn:
        from attnlab.attention.core import causal_mask
        from attnlab.attention.fast.sdpa_variants import document_sdpa

        docs = documents_of(t)
        mask = (docs[0][:, None] == docs[0][None, :]) & causal_mask(t, t)
        soft = normaliser("softmax", t)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if backend == "sdpa":
                return document_sdpa(q, k, v, docs, causal=True)
            if backend == "sdpa-mask":
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            return soft(scores, mask) @ v

        return fn

    return Case("softmax+documents", backend, build, dense=backend != "sdpa")


def xt_available() -> bool:
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def xt_case(mechanism: str, *, flash: bool, position: str | None = None, **attend_args: Any) -> Case:
    """x-transformers' ``Attend`` on the same q, k, v (its position bias modules for ALiBi / T5)."""

    def build(t: int) -> AttnFn:
        from x_transformers.attend import Attend
        from x_transformers.x_transformers import AlibiPositionalBias, RelativePositionBias

        args = dict(attend_args)
        if mechanism == "sigmoid":
            bias = normaliser("sigmoid", t).bias
            args["custom_attn_fn"] = lambda sim: (sim + bias).sigmoid()
        attend = Attend(causal=True, flash=flash, heads=HEADS, **args)
        if mechanism == "softmax+sinks":
            attend.head_attn_sink.data.copy_(sink_logits()[:, 0])
        bias_module: torch.nn.Module | None = None
        if position == "alibi":
            bias_module = AlibiPositionalBias(heads=HEADS)
        elif position == "t5":
            bias_module = RelativePositionBias(scale=1.0, causal=True, heads=HEADS)
            table, _ = position_mod("t5", t)
            bias_module.relative_attention_bias.weight.data.copy_(table.bias.data)

        def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            attn_bias = bias_module(q.shape[2], k.shape[2]) if bias_module is not None else None
            return attend(q, k, v, attn_bias=attn_bias)[0]

        return fn

    return Case(mechanism, "x-transformers", build, dense=not flash or position is not None)


def all_cases(*, flex: bool = True, xt: bool = True) -> list[Case]:
    """Every mechanism × backend the benchmark knows, in a fixed order (SDPA first: the denominator)."""
    cases = [sdpa_case()]
    softmax_family = [
        ("softmax", {}),
        ("softmax+alibi", {"position": "alibi"}),
        ("softmax+t5", {"position": "t5"}),
        ("softmax+softcap", {"softcap": SOFTCAP}),
    ]
    for mechanism, args in softmax_family:
        exact_sdpa = ("sdpa",) if "position" in args else ()  # ALiBi, T5: exact SDPA reformulations
        for backend in ("reference", *exact_sdpa, "chunked", *(("flex",) if flex else ())):
            cases.append(attnlab_case(mechanism, backend, "softmax", **args))
    for backend in ("sdpa", "reference", "chunked", *(("flex",) if flex else ())):
        cases.append(window_case(backend))
    for kind in ("logit", "kv"):
        for backend in ("reference", "sdpa", *(("flex",) if flex else ())):
            cases.append(sinks_case(backend, kind))
    for backend in ("reference", "sdpa", "sdpa-mask"):
        cases.append(documents_case(backend))
    for name in ("cog", "sigmoid", "lssa", "lssar", "clipped_softmax"):
        for backend in ("reference", "chunked"):
            cases.append(attnlab_case(name, backend, name))
    for backend in ("reference", "chunked"):
        cases.append(attnlab_case("linear_elu", backend, "linear_elu"))
    if xt and xt_available():
        cases += [
            xt_case("softmax", flash=True),
            xt_case("softmax+alibi", flash=True, position="alibi"),
            xt_case("softmax+t5", flash=True, position="t5"),
            xt_case("softmax+softcap", flash=False, softclamp_logits=True, logit_softclamp_value=SOFTCAP),
            xt_case("softmax+sinks", flash=False, head_learned_sink=True),
            xt_case("cog", flash=False, cog_signed=True),
            xt_case("sigmoid", flash=False),
        ]
    return cases


QUICK_CASES = ("softmax/sdpa", "softmax/reference", "sigmoid/reference", "sigmoid/chunked", "cog/chunked")


def select_cases(names: Sequence[str] | None, *, flex: bool, xt: bool) -> list[Case]:
    """The cases named (``mechanism/backend``, or a mechanism for all its backends); all by default."""
    cases = all_cases(flex=flex, xt=xt)
    if not names:
        return cases
    known = {c.name for c in cases} | {c.mechanism for c in cases}
    for n in names:
        if n not in known:
            raise ConfigError("cases", n, "unknown case", sorted(known))
    chosen = [c for c in cases if c.name in names or c.mechanism in names]
    if not any(c.name == "softmax/sdpa" for c in chosen):
        chosen.insert(0, sdpa_case())  # the floor every ratio is taken against
    return chosen
