"""The registry-wide invariants, as a library: what every entry of the zoo must satisfy, for any entry.

The zoo's own tests (``tests/zoo/test_registry_invariants.py``) call these functions for every registered entry, and
``attnlab check MODULE_OR_FILE`` calls them for the entries a user's module registers: a user's mechanism gets the
scrutiny the zoo's get. Each check builds the entry with its ``example`` arguments and the other axes plain (no
position encoding, or the entry itself), in small lively models (weights far from the uniform-attention
initialisation, so a leak or a stale cache entry moves the output), and checks what the entry's ``Capabilities``
declare:

- ``trains``: a causal model runs forward and backward with finite gradients (or the entry rejects causal use);
- ``causal``: changing later tokens leaves every earlier logit unchanged (float64);
- ``masking`` (normalisers): a future key gets exactly zero weight; ``row sums``: rows sum to 1 when declared
  row-stochastic, and do not all sum to 1 when not; ``sign``: no negative weight unless declared signed;
- ``gradcheck``: the attention layer's gradients equal finite differences (float64, ``torch.autograd.gradcheck``);
- ``kv-cache``: decoding with the KV cache (a prompt, then one token at a time) gives the full pass's logits
  (float64), or the cache is refused when not declared;
- ``non-causal`` and ``cross``: they run (an encoder's first position sees the last token), or are refused at
  config time when not declared;
- ``backends`` (normalisers): every declared backend equals the reference, outputs and the gradients of the input
  and every parameter (float32, bound from the dtype and the sequence length);
- ``bf16``: a forward pass under bfloat16 autocast is finite;
- tasks: ``batches`` (shapes, scored targets are token ids), ``determinism`` (a batch is a function of seed and
  step, and differs across steps and seeds).

A failing check raises ``CheckFailed`` (an ``AssertionError``, so a test calling it fails with its message); one
that does not apply raises ``NotApplicable``. ``run_checks`` runs them all and returns one ``Outcome`` each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError
from torch.func import functional_call

from attnlab.attention import HEADS, NORMALISERS, AttentionConfig, AttentionSite, build_attention
from attnlab.attention.linear.feature_maps import FEATURE_MAPS
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.position import POSITIONS
from attnlab.registry import Entry, Registry
from attnlab.tasks import IGNORE, TASKS, task_from_dict

AXES: dict[str, tuple[Registry, str]] = {
    "normaliser": (NORMALISERS, "normaliser"),
    "heads": (HEADS, "heads"),
    "position": (POSITIONS, "position"),
}
VOCAB, WIDTH, HEADS_N, MAX_T = 31, 32, 4, 16
# float64 comparisons of computations that should agree exactly: a few hundred roundings of ~1e-16 each at most
EXACT_64 = 1e-9


class CheckFailed(AssertionError):
    """An invariant does not hold; the message says what was seen."""


class NotApplicable(Exception):
    """The check does not apply to this entry (the message says why)."""


@dataclass(frozen=True)
class Outcome:
    axis: str
    name: str
    check: str
    status: str  # "pass", "fail" or "n/a"
    detail: str = ""


def entry_config(axis: str, entry: Entry) -> AttentionConfig:
    """The config that shows one entry: the entry with its example arguments, the other axes plain."""
    key = AXES[axis][1]
    base: dict[str, Any] = {"position": "nope" if axis != "position" else entry.name}
    base[key] = entry.name
    base[f"{key}_args"] = dict(entry.example)
    return AttentionConfig(**base)


def liven(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Re-draw every parameter so attention is far from uniform (norm gains near 1).

    The GPT-2 initialisation (std 0.02) makes every score ≈ 0, so weights are near uniform and a wrong position or a
    stale cache entry would change the logits by less than any tolerance.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm | nn.RMSNorm) and name == "weight":
                    p.normal_(1.0, 0.1)
                else:
                    p.normal_(0.0, std if p.dim() > 1 else 0.1)
    return model


def tiny_lm(axis: str, entry: Entry, mode: str = "decoder", n_layers: int = 2) -> TransformerLM:
    """A tiny lively model around one entry, in eval mode."""
    cfg = ModelConfig(
        vocab_size=VOCAB,
        d_model=WIDTH,
        n_heads=HEADS_N,
        n_layers=n_layers,
        mode=mode,
        max_seq_len=MAX_T,
        attention=entry_config(axis, entry),
    )
    return liven(TransformerLM(cfg)).eval()  # type: ignore[return-value]


def layer(axis: str, entry: Entry, site: AttentionSite, backend: str | None = None) -> nn.Module:
    """One lively attention layer of the entry (``backend``: another backend than the config's default)."""
    cfg = entry_config(axis, entry)
    if backend is not None:
        cfg = cfg.model_copy(update={"backend": backend})
    return liven(build_attention(cfg, site))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _require(entry: Entry, capability: str, use: str) -> None:
    if not getattr(entry.capabilities, capability):
        raise NotApplicable(f"not declared for {use}")


def _refused(make: Callable[[], Any], use: str) -> None:
    """``make`` must raise a ConfigError: the entry does not declare ``use``."""
    try:
        make()
    except ConfigError:
        return
    raise CheckFailed(f"not declared for {use}, yet a {use} model was built without a ConfigError")


def check_trains(axis: str, entry: Entry) -> None:
    """A causal model runs forward and backward with finite outputs and gradients (or refuses causal use)."""
    if not entry.capabilities.causal:
        _refused(lambda: tiny_lm(axis, entry), "causal")
        return
    model = tiny_lm(axis, entry).train()
    logits = model(torch.randint(0, VOCAB, (2, 9)))
    logits.square().mean().backward()
    if not torch.isfinite(logits).all():
        raise CheckFailed("non-finite logits")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reaches {missing[0]}")
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise CheckFailed(f"non-finite gradient of {bad[0]}")


def check_causal(axis: str, entry: Entry) -> None:
    """Changing tokens 6..8 leaves the logits at positions 0..5 unchanged (float64): no query sees the future."""
    _require(entry, "causal", "causal attention")
    model = tiny_lm(axis, entry).double()
    tokens = torch.randint(0, VOCAB, (2, 9))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % VOCAB
    with torch.no_grad():
        diff = _max_abs(model(changed)[:, :6], model(tokens)[:, :6])
    if diff > EXACT_64:
        raise CheckFailed(f"changing tokens 6-8 moved logits 0-5 by {diff:.3g}: queries see the future")


def _weights(entry: Entry, t: int) -> torch.Tensor:
    """The weights of a causal layer of the normaliser on a random input (float64), read at ``hook_pattern``."""
    site = AttentionSite(d_model=WIDTH, n_heads=HEADS_N, causal=True, seq_len=MAX_T)
    module = layer("normaliser", entry, site).double()
    seen: dict[str, torch.Tensor] = {}
    handle = module.hook_pattern.register_forward_hook(lambda _m, _i, out: seen.setdefault("w", out))
    try:
        with torch.no_grad():
            module(torch.randn(2, t, WIDTH, dtype=torch.float64))
    finally:
        handle.remove()
    if "w" not in seen:
        raise NotApplicable("the layer exposes no weights at hook_pattern")
    return seen["w"]


def check_masking(axis: str, entry: Entry) -> None:
    """Every future key gets exactly zero weight."""
    if axis != "normaliser":
        raise NotApplicable("weights are a normaliser's")
    _require(entry, "causal", "causal attention")
    w = _weights(entry, 9)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    leak = float(w[..., future].abs().max())
    if leak != 0.0:
        raise CheckFailed(f"a future key has weight {leak:.3g} (masked keys must get exactly 0)")


def check_row_sums(axis: str, entry: Entry) -> None:
    """Rows sum to 1 when declared row-stochastic; when not, not every row does."""
    if axis != "normaliser":
        raise NotApplicable("weights are a normaliser's")
    _require(entry, "causal", "causal attention")
    sums = _weights(entry, 9).sum(-1)
    off = float((sums - 1).abs().max())
    if entry.capabilities.row_stochastic and off > 1e-6:  # lssa's l1 normalisation divides by Σu + 1e-8
        raise CheckFailed(f"declared row_stochastic, but a row sums to 1 ± {off:.3g}")
    if not entry.capabilities.row_stochastic and off < 1e-3:
        raise CheckFailed("not declared row_stochastic, yet every row sums to 1: declare row_stochastic=True")


def check_sign(axis: str, entry: Entry) -> None:
    """No negative weight unless declared signed."""
    if axis != "normaliser":
        raise NotApplicable("weights are a normaliser's")
    _require(entry, "causal", "causal attention")
    low = float(_weights(entry, 9).min())
    if not entry.capabilities.signed and low < 0:
        raise CheckFailed(f"not declared signed, but a weight is {low:.3g}: declare signed=True or keep weights ≥ 0")


def check_gradcheck(axis: str, entry: Entry) -> None:
    """The attention layer's input gradients equal finite differences (float64)."""
    caps = entry.capabilities
    site = AttentionSite(d_model=8, n_heads=2, causal=caps.causal, seq_len=8, n_layers=1)
    module = layer(axis, entry, site).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    try:
        torch.autograd.gradcheck(lambda inp: module(inp), (x,), eps=1e-6, atol=1e-4)
    except GradcheckError as err:
        raise CheckFailed(f"gradients differ from finite differences: {str(err).splitlines()[0]}") from None


def check_kv_cache(axis: str, entry: Entry) -> None:
    """A prompt of 4 tokens, then 5 one at a time, with the KV cache: the full pass's logits (float64)."""
    _require(entry, "causal", "causal attention")
    model = tiny_lm(axis, entry).double()
    if not entry.capabilities.kv_cache:
        _refused(model.new_cache, "KV-cache decoding")
        return
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        pieces = [model(tokens[:, :4], cache)] + [model(tokens[:, t : t + 1], cache) for t in range(4, 9)]
    diff = _max_abs(torch.cat(pieces, dim=1), full)
    if diff > EXACT_64 * max(1.0, float(full.abs().max())):
        raise CheckFailed(f"decoding with the KV cache differs from the full pass by {diff:.3g}")


def check_non_causal(axis: str, entry: Entry) -> None:
    """An encoder runs and its first position sees the last token (or encoders are refused at config time)."""
    if not entry.capabilities.non_causal:
        _refused(lambda: tiny_lm(axis, entry, mode="encoder"), "non-causal")
        return
    model = tiny_lm(axis, entry, mode="encoder")
    tokens = torch.randint(0, VOCAB, (2, 9))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 5) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    if not torch.isfinite(before).all():
        raise CheckFailed("non-finite logits in an encoder")
    if torch.allclose(before[:, 0], after[:, 0]):
        raise CheckFailed("an encoder's first position does not see the last token")


def check_cross(axis: str, entry: Entry) -> None:
    """Cross-attention (5 queries, 7 keys of a context) runs with finite outputs, or is refused when not declared."""
    cfg = entry_config(axis, entry)
    site = AttentionSite(d_model=WIDTH, n_heads=HEADS_N, causal=False, cross=True, seq_len=MAX_T)
    if not entry.capabilities.cross:
        _refused(lambda: build_attention(cfg, site), "cross-attention")
        return
    module = liven(build_attention(cfg, site))
    with torch.no_grad():
        out = module(torch.randn(2, 5, WIDTH), context=torch.randn(2, 7, WIDTH))
    if out.shape != (2, 5, WIDTH) or not torch.isfinite(out).all():
        raise CheckFailed(f"cross-attention gave shape {tuple(out.shape)} or non-finite values")


def _outputs_and_grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    inp = x.detach().clone().requires_grad_(True)
    out = functional_call(module, dict(zip(names, params, strict=True)), (inp,))
    grads = torch.autograd.grad(out, [inp, *params], grad_out, allow_unused=True)
    filled = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, [inp, *params], strict=True)]
    return [out.detach(), *filled]


def check_backends(axis: str, entry: Entry) -> None:
    """Every declared backend equals the reference: outputs and gradients of the input and every parameter.

    float32, T = 13 (odd, several tiles' worth of masking); the bound is 64 · T · ε(float32) relative to each
    tensor's largest entry, far below what a wrong normalisation, mask or gradient gives (order 1).
    """
    if axis != "normaliser":
        raise NotApplicable("backends are a normaliser's")
    others = [b for b in entry.capabilities.backends if b != "reference"]
    if not others:
        raise NotApplicable("only the reference is declared")
    t = 13
    bound = 64 * t * torch.finfo(torch.float32).eps
    uses = [u for u, ok in ((True, entry.capabilities.causal), (False, entry.capabilities.non_causal)) if ok]
    for causal in uses:
        site = AttentionSite(d_model=WIDTH, n_heads=HEADS_N, causal=causal, seq_len=MAX_T)
        reference = layer(axis, entry, site, backend="reference")
        x, grad_out = torch.randn(2, t, WIDTH), torch.randn(2, t, WIDTH)
        want = _outputs_and_grads(reference, x, grad_out)
        for backend in others:
            module = build_attention(entry_config(axis, entry).model_copy(update={"backend": backend}), site)
            module.load_state_dict(reference.state_dict())
            got = _outputs_and_grads(module, x, grad_out)
            labels = ["output", "input gradient", *(f"gradient of {n}" for n, _ in reference.named_parameters())]
            for label, g, w in zip(labels, got, want, strict=True):
                err = _max_abs(g, w) / max(float(w.abs().max()), 1e-30)
                if err > bound:
                    use = "causal" if causal else "non-causal"
                    raise CheckFailed(f"backend {backend} ({use}): {label} differs from the reference by {err:.3g}")


def check_bf16(axis: str, entry: Entry) -> None:
    """A forward pass under bfloat16 autocast on the CPU gives finite bfloat16 logits."""
    mode = "decoder" if entry.capabilities.causal else "encoder"
    model = tiny_lm(axis, entry, mode=mode)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, VOCAB, (2, 7)))
    if logits.dtype != torch.bfloat16:
        raise CheckFailed(f"autocast did not run in bfloat16 (logits are {logits.dtype})")
    if not torch.isfinite(logits).all():
        raise CheckFailed("non-finite logits under bfloat16 autocast")


def check_task_batches(name: str) -> None:
    """The default config's batches have its shape, and every scored target is a token id."""
    config = task_from_dict({"name": name})
    batch = config.build(0).train_batch(0, 8)
    if not (batch.inputs.shape == batch.targets.shape == (8, config.seq_len)):
        raise CheckFailed(f"batch shapes {tuple(batch.inputs.shape)}, {tuple(batch.targets.shape)} ≠ (8, seq_len)")
    if int(batch.inputs.min()) < 0 or int(batch.inputs.max()) >= config.vocab_size:
        raise CheckFailed("an input is not a token id of the task's vocabulary")
    scored = batch.targets[batch.targets != IGNORE]
    if scored.numel() == 0 or int(scored.min()) < 0 or int(scored.max()) >= config.vocab_size:
        raise CheckFailed("no scored target, or a scored target outside the vocabulary")


def check_task_determinism(name: str) -> None:
    """A training batch is a function of (seed, step), and differs across steps and seeds."""

    def batch(seed: int, step: int) -> torch.Tensor:
        return task_from_dict({"name": name}).build(seed).train_batch(step, 8).inputs

    if not torch.equal(batch(3, 7), batch(3, 7)):
        raise CheckFailed("the same seed and step gave different batches")
    if torch.equal(batch(0, 1), batch(0, 2)):
        raise CheckFailed("steps 1 and 2 gave the same batch")
    if torch.equal(batch(0, 1), batch(1, 1)):
        raise CheckFailed("seeds 0 and 1 gave the same batch")


ATTENTION_CHECKS: dict[str, Callable[[str, Entry], None]] = {
    "trains": check_trains,
    "causal": check_causal,
    "masking": check_masking,
    "row sums": check_row_sums,
    "sign": check_sign,
    "gradcheck": check_gradcheck,
    "kv-cache": check_kv_cache,
    "non-causal": check_non_causal,
    "cross": check_cross,
    "backends": check_backends,
    "bf16": check_bf16,
}
TASK_CHECKS: dict[str, Callable[[str], None]] = {
    "batches": check_task_batches,
    "determinism": check_task_determinism,
}


def _run_one(axis: str, name: str, check: str, fn: Callable[[], None]) -> Outcome:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        try:
            fn()
        except NotApplicable as why:
            return Outcome(axis, name, check, "n/a", str(why))
        except CheckFailed as err:
            return Outcome(axis, name, check, "fail", str(err))
        except Exception as exc:  # an entry that crashes fails the check with what it raised
            first = (str(exc).strip().splitlines() or [""])[0]
            return Outcome(axis, name, check, "fail", f"raised {type(exc).__name__}: {first}")
    return Outcome(axis, name, check, "pass")


def run_checks(entries: Iterable[tuple[Registry, Entry]]) -> list[Outcome]:
    """Every check of every entry (normalisers, heads, positions, tasks; a feature map has none of its own)."""
    kinds = {registry.kind: axis for axis, (registry, _) in AXES.items()}
    out: list[Outcome] = []
    for registry, entry in entries:
        if registry.kind in kinds:
            axis = kinds[registry.kind]
            for check, fn in ATTENTION_CHECKS.items():
                out.append(_run_one(axis, entry.name, check, lambda fn=fn, axis=axis, e=entry: fn(axis, e)))
        elif registry is TASKS:
            for check, task_fn in TASK_CHECKS.items():
                out.append(_run_one("task", entry.name, check, lambda f=task_fn, n=entry.name: f(n)))
        elif registry is FEATURE_MAPS:
            out.append(Outcome("feature_map", entry.name, "registered", "n/a", "checked through its normaliser"))
    return out
