"""The block-sparse kernel equals the dense reference of its layout: compiled and PyTorch forms, every dtype.

Known answers: the full causal layout is causal SDPA; any layout is the masked softmax over ``layout_mask`` (float64:
to rounding; float32 and bf16: within the bounds of ``tests/tolerances.py``). Odd lengths (not a multiple of the
block), GQA, empty rows of blocks or columns, and the layout checks.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.fast import block_sparse as bsp
from attnlab.attention.fast.block_sparse import BlockLayout, block_sparse_attention, layout_mask
from tolerances import order_bound, scale_of, unit_roundoff

FORMS = ["compiled", "pytorch"]


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> bool:
    """True: the compiled kernel (it must build where a compiler exists); False: the PyTorch form."""
    if request.param == "compiled":
        if not (shutil.which("c++") or shutil.which("g++")):
            pytest.skip("no C++ compiler: the compiled kernel cannot be built here")
        enabled = bsp.native.ENABLED
        bsp.native.ENABLED = True
        assert bsp.compiled() is not None, f"block-sparse kernel unavailable: {bsp.unavailable_reason()}"
        yield True
        bsp.native.ENABLED = enabled
        return
    yield False


def reference(q, k, v, mask, scale):
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    s = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def random_layout(h: int, t: int, block: int, max_blocks: int, max_cols: int, seed: int = 0) -> BlockLayout:
    g = torch.Generator().manual_seed(seed)
    nq = -(-t // block)
    blocks = torch.full((h, nq, max_blocks), -1, dtype=torch.long)
    cols = torch.full((h, nq, max_cols), -1, dtype=torch.long)
    for head in range(h):
        for i in range(1, nq):
            n = int(torch.randint(0, min(i, max_blocks) + 1, (), generator=g))
            chosen = torch.randperm(i, generator=g)[:n]
            blocks[head, i, :n] = chosen
            free = torch.tensor([c for c in range(i * block) if c // block not in chosen.tolist()], dtype=torch.long)
            m = min(len(free), int(torch.randint(0, max_cols + 1, (), generator=g)))
            cols[head, i, :m] = free[torch.randperm(len(free), generator=g)[:m]]
    layout = BlockLayout(t, block, blocks, cols)
    layout.check()
    return layout


def qkv(h: int, hkv: int, t: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, t, d, generator=g).mul(1.5).to(dtype) for n in (h, hkv, hkv)]


@pytest.mark.parametrize(("h", "hkv", "t", "block"), [(4, 4, 203, 16), (4, 2, 129, 32), (6, 2, 64, 16), (2, 1, 5, 16)])
def test_any_layout_equals_its_masked_softmax_in_float64(form: bool, h: int, hkv: int, t: int, block: int) -> None:
    q, k, v = qkv(h, hkv, t, 16, torch.float64)
    layout = random_layout(h, t, block, 4, 9)
    got = block_sparse_attention(q, k, v, layout, scale=0.3, use_compiled=form)
    want = reference(q, k, v, layout_mask(layout), 0.3)
    assert (got - want).abs().max().item() <= order_bound(torch.float64, t, depth=3, condition=4.0) * scale_of(want)


def test_the_full_causal_layout_is_causal_sdpa(form: bool) -> None:
    h, hkv, t, d, block = 6, 2, 300, 32, 64
    q, k, v = qkv(h, hkv, t, d, torch.float32)
    nq = -(-t // block)
    blocks = torch.arange(nq).expand(h, nq, nq).flip(-1).clone()
    blocks = torch.where(blocks < torch.arange(nq)[:, None], blocks, -1)
    layout = BlockLayout(t, block, blocks, torch.full((h, nq, 0), -1, dtype=torch.long))
    assert layout.density() == 1.0
    got = block_sparse_attention(q, k, v, layout, use_compiled=form)
    want = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)[0]
    bound = order_bound(torch.float32, n_terms=t, depth=3, condition=4.0) * scale_of(want)
    torch.testing.assert_close(got, want, atol=bound, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_and_bf16_are_within_rounding_of_the_float64_reference(form: bool, dtype: torch.dtype) -> None:
    h, hkv, t, d, block = 4, 2, 333, 16, 32
    q, k, v = qkv(h, hkv, t, d, dtype, seed=3)
    layout = random_layout(h, t, block, 5, 20, seed=3)
    got = block_sparse_attention(q, k, v, layout, use_compiled=form)
    assert got.dtype == dtype
    want = reference(q.double(), k.double(), v.double(), layout_mask(layout), d**-0.5)
    # float32: order_bound over the row's keys (scores, softmax sum, weights · v), exp amplifying the scores'
    # error by up to max |s| (≈ 4 here). bf16: P and the output are rounded to bf16 (u·max|v| each, twice).
    bound = order_bound(torch.float32, n_terms=t, depth=3, condition=4.0) * scale_of(want)
    if dtype == torch.bfloat16:
        bound += 3 * unit_roundoff(dtype) * scale_of(v.double())
    assert (got.double() - want).abs().max().item() <= bound


def test_rows_without_blocks_or_columns_are_their_diagonal_block_alone(form: bool) -> None:
    h, t, block = 2, 100, 16
    q, k, v = qkv(h, h, t, 8, torch.float64)
    nq = -(-t // block)
    empty = torch.full((h, nq, 3), -1, dtype=torch.long)
    layout = BlockLayout(t, block, empty, empty.clone())
    assert layout.density() == pytest.approx(nq / (nq * (nq + 1) / 2))
    got = block_sparse_attention(q, k, v, layout, use_compiled=form)
    mask = torch.ones(t, t, dtype=torch.bool).tril() & (torch.arange(t)[:, None] // block == torch.arange(t) // block)
    want = reference(q, k, v, mask.expand(h, t, t), 8**-0.5)
    assert (got - want).abs().max().item() <= 1e-12


def test_the_mask_lists_the_diagonal_blocks_and_columns() -> None:
    blocks = torch.tensor([[[-1], [-1], [0]]])
    cols = torch.tensor([[[-1, -1], [3, -1], [9, 5]]])  # query block 2 (rows 8, 9): column 5 (block 1), 9 is its own
    layout = BlockLayout(10, 4, blocks, torch.tensor([[[-1, -1], [3, -1], [5, -1]]]))
    layout.check()
    m = layout_mask(layout)[0]
    assert m[9].nonzero().flatten().tolist() == [0, 1, 2, 3, 5, 8, 9]
    assert m[5].nonzero().flatten().tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="before its query block"):
        BlockLayout(10, 4, blocks, cols).check()


@pytest.mark.parametrize(
    ("blocks", "cols", "message"),
    [
        ([[[-1], [1], [-1]]], [[[-1], [-1], [-1]]], "come before"),
        ([[[-1, -1], [0, 0], [-1, -1]]], [[[-1], [-1], [-1]]], "twice"),
        ([[[-1], [-1], [0]]], [[[-1], [-1], [2]]], "inside a listed block"),
    ],
)
def test_malformed_layouts_are_refused(blocks, cols, message) -> None:
    with pytest.raises(ValueError, match=message):
        BlockLayout(12, 4, torch.tensor(blocks), torch.tensor(cols)).check()


def test_inputs_that_require_grad_or_mismatch_the_layout_are_refused() -> None:
    q, k, v = qkv(2, 2, 32, 8, torch.float32)
    layout = random_layout(2, 32, 8, 2, 2)
    with pytest.raises(ValueError, match="forward only"):
        block_sparse_attention(q.requires_grad_(), k, v, layout)
    with pytest.raises(ValueError, match="layout is for"):
        block_sparse_attention(q.detach()[:, :30], k[:, :30], v[:, :30], layout)


def test_the_compiled_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bsp.native, "ENABLED", False)
    assert bsp.unavailable_reason() == "disabled (ATTNLAB_NATIVE=0)"
    q, k, v = qkv(2, 1, 40, 8, torch.float64)
    layout = random_layout(2, 40, 8, 2, 3)
    with pytest.raises(RuntimeError, match="not available"):
        block_sparse_attention(q, k, v, layout, use_compiled=True)
    got = block_sparse_attention(q, k, v, layout)  # falls back to the PyTorch form
    assert (got - reference(q, k, v, layout_mask(layout), 8**-0.5)).abs().max().item() <= 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the non-CPU form runs on CUDA only here")
def test_the_pytorch_form_runs_on_cuda() -> None:
    q, k, v = (x.cuda() for x in qkv(4, 2, 150, 16, torch.float32))
    layout = random_layout(4, 150, 16, 3, 5)
    cuda_layout = BlockLayout(layout.t, layout.block, layout.blocks.cuda(), layout.columns.cuda())
    got = block_sparse_attention(q, k, v, cuda_layout)
    want = reference(q.double(), k.double(), v.double(), layout_mask(cuda_layout), 0.25)
    assert (got.double() - want).abs().max().item() <= order_bound(torch.float32, 150, 3, 4.0) * scale_of(want)


def test_runs_and_columns_longer_than_a_key_tile(form: bool) -> None:
    """The compiled kernel cuts runs of consecutive blocks and lists of columns into tiles of 512 keys: a layout
    with runs of up to 750 keys and up to 750 columns per query block crosses those boundaries."""
    h, t, block = 2, 1600, 50  # 32 query blocks
    q, k, v = qkv(h, 1, t, 8, torch.float64, seed=5)
    nq = -(-t // block)
    i = torch.arange(nq)[:, None]
    blocks = torch.where(torch.arange(nq)[None, :] < i // 2, torch.arange(nq)[None, :], -1)  # the first half
    cols = torch.arange(t)[None, :].expand(nq, t)
    cols = torch.where((cols >= (i // 2) * block) & (cols < i * block), cols, -1)  # the second half, as columns
    layout = BlockLayout(t, block, blocks.expand(h, nq, nq).clone(), cols.expand(h, nq, t).clone())
    layout.check()
    assert int(layout.column_counts().max()) > 512 and int(layout.block_counts().max()) * block > 512
    got = block_sparse_attention(q, k, v, layout, use_compiled=form)
    want = reference(q, k, v, layout_mask(layout), 8**-0.5)
    assert (got - want).abs().max().item() <= order_bound(torch.float64, t, depth=3, condition=4.0) * scale_of(want)
