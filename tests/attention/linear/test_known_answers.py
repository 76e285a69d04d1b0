"""Each mechanism's reference equals its paper's formula, written out here with plain loops in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import make_kernel, qkv, run

from attnlab.attention.linear.feature_maps import elu1, taylor
from attnlab.attention.linear.kernel_rpe_fft import toeplitz_matmul_fft
from attnlab.attention.linear.lightning import tnl_slopes
from attnlab.attention.linear.retnet import retnet_gammas
from tolerances import order_bound


def test_taylor_features_dot_to_one_plus_s_plus_half_s_squared() -> None:
    q, k = torch.randn(5, 16, dtype=torch.float64), torch.randn(7, 16, dtype=torch.float64)
    s = q @ k.T / math.sqrt(16)
    assert taylor(q).shape == (5, 1 + 16 + 16 * 16)
    torch.testing.assert_close(taylor(q) @ taylor(k).T, 1 + s + s**2 / 2)


def test_elu_linear_attention_is_the_papers_rnn_written_as_a_loop() -> None:
    """S_i = S_{i−1} + φ(k_i) v_iᵀ, z_i = z_{i−1} + φ(k_i), out_i = φ(q_i)ᵀS_i / (φ(q_i)ᵀz_i + ε)."""
    q, k, v = qkv(6, 6)
    out = run(make_kernel("linear_elu"), "reference", q, k, v).out
    for b in range(2):
        for h in range(2):
            state = torch.zeros(8, 5, dtype=torch.float64)
            z = torch.zeros(8, dtype=torch.float64)
            for i in range(6):
                state = state + torch.outer(elu1(k[b, h, i]), v[b, h, i])
                z = z + elu1(k[b, h, i])
                expected = elu1(q[b, h, i]) @ state / (elu1(q[b, h, i]) @ z + 1e-12)
                torch.testing.assert_close(out[b, h, i], expected)


def test_lightning_without_decay_or_norm_is_causal_q_k_transpose_v() -> None:
    q, k, v = qkv(7, 7)
    out = run(make_kernel("lightning", decay=False, output_norm="none"), "reference", q, k, v).out
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(out, ((q @ k.transpose(-1, -2)) * mask) @ v)


def test_lightning_weights_decay_as_lambda_to_the_distance() -> None:
    normaliser = make_kernel("lightning")
    q, k, v = qkv(6, 6)
    weights = run(normaliser, "reference", q, k, v).weights
    for h in range(2):
        lam = math.exp(-normaliser.slopes[h].item())
        for i in range(6):
            for j in range(6):
                expected = (q[0, h, i] @ k[0, h, j]).item() * lam ** (i - j) if j <= i else 0.0
                assert weights[0, h, i, j].item() == pytest.approx(expected, abs=1e-12)


def test_lightning_output_is_rms_normalised_over_all_heads_of_a_token() -> None:
    q, k, v = qkv(6, 6)
    out = run(make_kernel("lightning"), "reference", q, k, v).out
    rms = out.pow(2).mean(dim=(1, 3))  # [B, T]: over heads and d_head
    # m / (m + ε), m the mean square before the norm (ε = 1e-6; a draw can give m ~ 0.1 on the first token), in
    # float64: the mean of 2 · 5 squares, the rsqrt and the products, order_bound over 4 steps.
    before = run(make_kernel("lightning", output_norm="none"), "reference", q, k, v).out.pow(2).mean(dim=(1, 3))
    atol = order_bound(torch.float64, n_terms=10, depth=4)
    torch.testing.assert_close(rms, before / (before + 1e-6), atol=atol, rtol=0)


def test_tnl_slopes_are_alibi_slopes_weakened_with_depth() -> None:
    alibi = torch.tensor([2.0 ** (-(h + 1)) for h in range(8)], dtype=torch.float64)  # H = 8: 1/2 … 1/256
    torch.testing.assert_close(tnl_slopes(8, 0, 5), alibi * (1 + 1e-5))
    torch.testing.assert_close(tnl_slopes(8, 2, 5), alibi * (0.5 + 1e-5))
    torch.testing.assert_close(tnl_slopes(8, 4, 5), alibi * 1e-5)


def test_retnet_gammas_are_one_minus_two_to_minus_five_minus_h() -> None:
    torch.testing.assert_close(
        retnet_gammas(4), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]).double()
    )


def test_retnet_weights_follow_the_papers_three_normalisations() -> None:
    """R_ij = (q_i·k_j/√d) γ^{i−j} / √(Σ_{j'≤i} γ^{i−j'}),  R̃_ij = R_ij / max(|Σ_j R_ij|, 1)."""
    q, k, v = qkv(6, 6)
    weights = run(make_kernel("retnet"), "reference", q, k, v).weights
    gammas = retnet_gammas(2).float().double()  # the module stores its slopes in float32
    clamped = 0
    for h in range(2):
        g = gammas[h].item()
        for i in range(6):
            row_norm = math.sqrt(sum(g ** (i - j) for j in range(i + 1)))
            r = [(q[0, h, i] @ k[0, h, j]).item() / math.sqrt(8) * g ** (i - j) / row_norm for j in range(i + 1)]
            clamped += abs(sum(r)) > 1
            expected = [x / max(abs(sum(r)), 1.0) for x in r] + [0.0] * (5 - i)
            torch.testing.assert_close(weights[0, h, i], torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert 0 < clamped < 12, "the input should make some rows, not all, exceed |Σ R| = 1"


def test_retnet_output_is_rms_normalised_per_head() -> None:
    q, k, v = qkv(6, 6)
    out = run(make_kernel("retnet"), "reference", q, k, v).out
    rms = out.pow(2).mean(-1)
    # x / √(m + ε) has mean square m / (m + ε), m the mean square before the norm (ε = 1e-6): 1 only where m ≫ ε,
    # and a row that cancels can have m ~ 1e-4 (a draw-dependent 1e-2 from 1). float64: the mean of 5 squares, the
    # rsqrt and the products, order_bound over 4 steps.
    before = run(make_kernel("retnet", output_norm="none"), "reference", q, k, v).out.pow(2).mean(-1)
    atol = order_bound(torch.float64, n_terms=5, depth=4)
    torch.testing.assert_close(rms, before / (before + 1e-6), atol=atol, rtol=0)


def test_based_weights_average_taylor_rows_and_a_window_softmax() -> None:
    normaliser = make_kernel("based")  # feature_dim 4, window 3
    q, k, v = qkv(7, 7)
    weights = run(normaliser, "reference", q, k, v).weights
    qf = torch.einsum("bhtd,hdf->bhtf", q, normaliser.proj_q)
    kf = torch.einsum("bhtd,hdf->bhtf", k, normaliser.proj_k)
    for h in range(2):
        for i in range(7):
            s = [(qf[0, h, i] @ kf[0, h, j]).item() / 2.0 for j in range(i + 1)]  # c = 1/√d_f = 1/2
            taylor_row = [1 + x + x * x / 2 for x in s]
            exps = [math.exp(x) if i - j < 3 else 0.0 for j, x in enumerate(s)]
            expected = [(t / sum(taylor_row) + e / sum(exps)) / 2 for t, e in zip(taylor_row, exps, strict=True)]
            torch.testing.assert_close(weights[0, h, i, : i + 1], torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("t", [1, 7, 13])
def test_fft_toeplitz_product_equals_the_dense_matrix_product(t: int) -> None:
    c = torch.randn(2, 2 * t - 1, dtype=torch.float64)  # offsets j − i = −(t−1) … t−1
    x = torch.randn(3, 2, t, 4, dtype=torch.float64)
    offsets = torch.arange(t)[None, :] - torch.arange(t)[:, None]  # [i, j] → j − i
    dense = c[:, offsets + t - 1]  # [H, T, T], C_ij = c_{j−i}
    torch.testing.assert_close(toeplitz_matmul_fft(c, x), dense @ x)


def test_kernel_rpe_weights_are_c_times_the_performer_kernel_normalised() -> None:
    normaliser = make_kernel("kernel_rpe_fft")
    q, k, v = qkv(6, 6)
    weights = run(normaliser, "reference", q, k, v).weights
    w = normaliser.feature_map.projection  # [m, d]

    def phi(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return torch.exp(w @ x - 0.5) / math.sqrt(w.shape[0])  # ‖x‖ = 1

    for h in range(2):
        for i in range(6):
            u = [
                math.exp(normaliser.rpe[h, j - i + 15].item()) * (phi(q[0, h, i]) @ phi(k[0, h, j])).item()
                for j in range(i + 1)
            ]
            expected = [x / sum(u) for x in u] + [0.0] * (5 - i)
            torch.testing.assert_close(weights[0, h, i], torch.tensor(expected, dtype=torch.float64))


def test_kernel_rpe_offsets_beyond_max_len_share_the_edge_coefficient() -> None:
    normaliser = make_kernel("kernel_rpe_fft", max_len=4)
    c = normaliser.coefficients(torch.tensor([-9, -3, 3, 9]), torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(c[:, 0], c[:, 1])
    torch.testing.assert_close(c[:, 2], c[:, 3])


def test_a_one_layer_model_keeps_the_first_layer_slopes() -> None:
    """TNL's l/(L−1) is undefined for L = 1; the only layer is treated as the first."""
    torch.testing.assert_close(tnl_slopes(2, 0, 1), torch.tensor([1 / 16, 1 / 256], dtype=torch.float64) * (1 + 1e-5))
