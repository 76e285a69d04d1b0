"""Every fast path equals the quadratic reference, in outputs and in every gradient (float64, T = 13)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import make_kernel, qkv, run

SCANNED = ["linear_elu", "hedgehog", "based", "lightning", "retnet"]
BACKENDS = [("recurrent", 64), ("chunked", 4), ("chunked", 5)]  # chunk sizes that do not divide T = 13
MODES = {  # (Tq, Tk, causal)
    "causal": (13, 13, True),
    "non-causal": (13, 13, False),
    "decoding": (4, 13, True),  # queries are the last 4 positions, as with a KV cache
}


def backend_id(case: tuple[str, int]) -> str:
    return case[0] if case[0] == "recurrent" else f"chunked-{case[1]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS, ids=backend_id)
@pytest.mark.parametrize("name", SCANNED)
def test_scanned_backend_equals_the_reference(name: str, backend: tuple[str, int], mode: str) -> None:
    path, chunk = backend
    t_q, t_k, causal = MODES[mode]
    normaliser = make_kernel(name, chunk_size=chunk)
    q, k, v = qkv(t_q, t_k)
    expected = run(normaliser, "reference", q, k, v, causal).out
    torch.testing.assert_close(run(normaliser, path, q, k, v, causal).out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_fft_backend_equals_the_reference(mode: str) -> None:
    t_q, t_k, causal = MODES[mode]
    normaliser = make_kernel("kernel_rpe_fft")
    q, k, v = qkv(t_q, t_k)
    expected = run(normaliser, "reference", q, k, v, causal).out
    torch.testing.assert_close(run(normaliser, "fft", q, k, v, causal).out, expected, atol=1e-6, rtol=0)


def gradients(normaliser, backend: str, q, k, v) -> list[torch.Tensor]:
    """d(sum of out · fixed random weights) w.r.t. q, k, v and every parameter of the normaliser."""
    out = run(normaliser, backend, q, k, v, True).out
    probe = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    inputs = [q, k, v, *normaliser.parameters()]
    return list(torch.autograd.grad((out * probe).sum(), inputs))


@pytest.mark.parametrize("backend", [("recurrent", 64), ("chunked", 5)], ids=backend_id)
@pytest.mark.parametrize("name", SCANNED)
def test_scanned_backend_gradients_equal_the_reference_gradients(name: str, backend: tuple[str, int]) -> None:
    path, chunk = backend
    normaliser = make_kernel(name, chunk_size=chunk)
    q, k, v = qkv(requires_grad=True)
    expected = gradients(normaliser, "reference", q, k, v)
    for got, want in zip(gradients(normaliser, path, q, k, v), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_fft_backend_gradients_equal_the_reference_gradients() -> None:
    normaliser = make_kernel("kernel_rpe_fft")
    q, k, v = qkv(requires_grad=True)
    expected = gradients(normaliser, "reference", q, k, v)
    for got, want in zip(gradients(normaliser, "fft", q, k, v), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SCANNED)
def test_grouped_keys_give_the_same_output_on_every_path(name: str) -> None:
    """GQA: 2 query heads read 1 key/value head."""
    normaliser = make_kernel(name, chunk_size=5)
    q = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    k, v = torch.randn(1, 1, 9, 8, dtype=torch.float64), torch.randn(1, 1, 9, 3, dtype=torch.float64)
    expected = run(normaliser, "reference", q, k, v).out
    for path in ("recurrent", "chunked"):
        torch.testing.assert_close(run(normaliser, path, q, k, v).out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_scanned_backends_reject_a_window_with_a_message_naming_the_fix(backend: str) -> None:
    normaliser = make_kernel("linear_elu")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend='reference'"):
        getattr(normaliser, f"attend_{backend}")(q, k, v, causal=True, scale=1.0, window=3)


def test_kernel_attention_rejects_a_score_mod() -> None:
    normaliser = make_kernel("linear_elu")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="score_mod"):
        normaliser.attend(q, k, v, score_mod=lambda s, b, h, i, j: s, causal=True)
