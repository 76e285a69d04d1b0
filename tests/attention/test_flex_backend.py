"""The flex backend (compiled FlexAttention) equals the reference: outputs and every gradient.

Compiling costs ~20 s for the first variant and a few seconds for each further one, so this file uses one
shape ([2, 4, 11, 8], the shape of ``make_lm``'s layers) and three compiled variants: plain causal; ALiBi +
soft-capping + sliding window; T5 bias + document mask.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import HEADS, NORMALISERS, AttentionSite, attend_reference
from attnlab.attention.fast import chunked, flex
from attnlab.position.alibi import ALiBi
from attnlab.position.t5 import T5RelativeBias
from tolerances import LM_TERMS, lm_atol, lm_depth, order_bound, scale_of

SITE = AttentionSite(d_model=32, n_heads=4)
SHAPE = (2, 4, 11, 8)


def softmax(softcap: float | None = None) -> torch.nn.Module:
    entry = NORMALISERS.entry("softmax")
    return entry.factory(entry.params(softcap=softcap), SITE)


@pytest.fixture
def flex_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls into the compiled kernel (to tell flex from its chunked fallback)."""
    calls: list[int] = []
    real = flex.compiled_flex

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(flex, "compiled_flex", counted)
    return calls


def qkv(kv_heads: int = 4) -> tuple[torch.Tensor, ...]:
    b, h, t, d = SHAPE
    return (
        torch.randn(b, h, t, d, requires_grad=True),
        torch.randn(b, kv_heads, t, d, requires_grad=True),
        torch.randn(b, kv_heads, t, d, requires_grad=True),
    )


def assert_same(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-4, f"{name}: relative error {err:.2e}"


def check(inputs, flex_out, ref_out) -> None:
    grad = torch.randn_like(ref_out)
    assert_same(flex_out, ref_out, "output")
    for i, (g_flex, g_ref) in enumerate(
        zip(torch.autograd.grad(flex_out, inputs, grad), torch.autograd.grad(ref_out, inputs, grad), strict=True)
    ):
        assert_same(g_flex, g_ref, f"gradient {i}")


def test_flex_module_matches_reference_and_decodes_with_the_cache(make_lm, flex_calls) -> None:
    reference = make_lm(position="rope", backend="reference")
    fast = make_lm(position="rope", backend="flex")
    fast.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 31, (2, 11))
    full, got = reference(tokens), fast(tokens)
    assert flex_calls, "the flex kernel was not called"
    # float32 (flex compiles float32 only): two orders of one computation, lm_atol (tests/tolerances.py); the
    # parameter gradients go back through the same chain (twice the depth), relative to each gradient's scale.
    torch.testing.assert_close(got, full, atol=lm_atol(full), rtol=0)
    grads = [
        torch.autograd.grad(out.square().sum(), list(m.parameters())) for out, m in ((got, fast), (full, reference))
    ]
    for g_fast, g_ref in zip(*grads, strict=True):
        atol = order_bound(torch.float32, LM_TERMS, depth=2 * lm_depth(2)) * scale_of(g_ref)
        torch.testing.assert_close(g_fast, g_ref, atol=atol, rtol=0)
    cache = fast.new_cache()  # decoding: Tq < Tk runs the chunked softmax (no compile per cache length)
    steps = torch.cat([fast(tokens[:, :6], cache), *(fast(tokens[:, t : t + 1], cache) for t in range(6, 11))], dim=1)
    torch.testing.assert_close(steps, full.detach(), atol=lm_atol(full), rtol=0)


@pytest.mark.parametrize("whole_rows", [2048, 0], ids=["rows", "tiles"])
def test_flex_with_alibi_softcap_and_window_matches_reference(
    flex_calls, whole_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backward in one tile per block, or in tiles of 3 keys (then it computes the logsumexp first)."""
    monkeypatch.setattr(chunked, "DEFAULT_WHOLE_ROWS", whole_rows)
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK", 4)
    monkeypatch.setattr(chunked, "DEFAULT_KEY_BLOCK", 3)
    q, k, v = qkv(kv_heads=2)  # GQA as well
    mod = ALiBi(None, SITE).score_mod()
    out, _ = flex.flex_softmax(q, k, v, score_mod=mod, causal=True, window=4, softcap=3.0)
    assert flex_calls
    ref = attend_reference(q, k, v, normaliser=softmax(3.0), score_mod=mod, causal=True, window=4).out
    check((q, k, v), out, ref)


def test_flex_with_t5_bias_and_documents_trains_the_table(flex_calls) -> None:
    q, k, v = qkv()
    t5 = T5RelativeBias(None, SITE)
    documents = torch.tensor([[0] * 4 + [1] * 7, [0] * 9 + [1] * 2])
    out, _ = flex.flex_softmax(q, k, v, score_mod=t5.score_mod(), causal=True, documents=documents)
    assert flex_calls
    # the reference: a dense mask of causal ∧ same document, through a score_mod that hides other documents
    same = documents[:, :, None] == documents[:, None, :]  # [B, T, T]

    def t5_in_document(s, b, h, q_idx, kv_idx):
        return t5.score_mod()(s, b, h, q_idx, kv_idx).masked_fill(~same[:, None], float("-inf"))

    ref = attend_reference(q, k, v, normaliser=softmax(), score_mod=t5_in_document, causal=True).out
    check((q, k, v, t5.bias), out, ref)


@pytest.mark.parametrize("kind", ["logit", "kv"])
def test_flex_sinks_match_the_sinks_heads_reference(kind: str, flex_calls) -> None:
    heads = HEADS.entry("sinks")
    module = heads.factory(heads.params(n_sinks=2, kind=kind, n_kv_heads=2), SITE)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()  # non-zero sink logits and values
    q, k, v = qkv(kv_heads=2)
    ref = module.attend(q, k, v, normaliser=softmax(), causal=True)
    if kind == "logit":
        out, mass = flex.attend_with_sinks(q, k, v, sink_logits=module.sink_logit, causal=True)
        extra = (module.sink_logit,)
    else:
        out, mass = flex.attend_with_sinks(q, k, v, sink_keys=module.sink_k, sink_values=module.sink_v, causal=True)
        extra = (module.sink_k, module.sink_v)
    assert flex_calls
    torch.testing.assert_close(mass, ref.sink_mass, atol=1e-5, rtol=1e-4)
    check((q, k, v, *extra), out, ref.out)


def test_flex_falls_back_to_chunked_for_float64_and_decoding(flex_calls) -> None:
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: flex.flex_softmax(q, k, v, causal=True)[0], (q, k, v))
    cache_q = torch.randn(1, 2, 1, 4)
    out, _ = flex.flex_softmax(cache_q, k.detach().float(), v.detach().float(), causal=True)
    expected = attend_reference(cache_q, k.float(), v.float(), normaliser=softmax()).out
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert not flex_calls


def test_flex_without_a_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flex, "_COMPILED", None)
    monkeypatch.setattr(flex, "compiler_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs torch.compile, which needs a C\+\+ compiler"):
        flex.flex_softmax(*qkv(), causal=True)
