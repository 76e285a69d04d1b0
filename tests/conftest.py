"""Shared set-up: offline, seeded, single-threaded, and a factory of tiny lively models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
# Corpora the tests build (the stdlib one is built on first use) go to a fresh folder, not ~/.cache.
if "ATTNLAB_DATA" not in os.environ:
    import tempfile

    os.environ["ATTNLAB_DATA"] = tempfile.mkdtemp(prefix="attnlab-test-data-")

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

# Triton decides at its first import whether kernels run under its interpreter. Without a GPU, switch it on before
# anything (torch's inductor included) imports triton, so the Triton kernels' equivalence tests run on the CPU in
# this process whatever ran before them; on a GPU the compiled kernels are tested instead (bench/device_check.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attnlab.attention import AttentionConfig
from attnlab.checks import liven  # lively weights, as the registry-wide checks build them
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.registry import registries

# Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel op waits for a
# descheduled worker thread (milliseconds per softmax). ATTNLAB_TEST_THREADS=2 runs the suite with two (the
# reductions then split differently, so the float comparisons meet another summation order).
torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))

# Every test starts from torch.manual_seed(ATTNLAB_TEST_SEED) (0 unless set): rerunning the suite with other seeds
# checks that the float comparisons' bounds hold for other draws, not just for the one they were tried on.
TEST_SEED = int(os.environ.get("ATTNLAB_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(TEST_SEED)


@pytest.fixture(autouse=True)
def _registries_as_they_were() -> Iterator[None]:
    """Entries a test registers (a plugin file it imports) are gone after it: later tests, such as the generated
    docs' check against every registry entry, see the zoo as it is, whatever ran before them."""
    saved = [(registry, dict(registry._entries)) for registry in registries()]
    yield
    for registry, entries in saved:
        registry._entries.clear()
        registry._entries.update(entries)


@pytest.fixture
def make_lm() -> Callable[..., TransformerLM]:
    """``make_lm(normaliser="cog", position="alibi", ...)``: a tiny, lively model in eval mode.

    Keyword arguments go to ``AttentionConfig``, except ``n_layers`` and ``mode`` (``ModelConfig``).
    """

    def make(n_layers: int = 2, mode: str = "decoder", **attention: Any) -> TransformerLM:
        cfg = ModelConfig(
            vocab_size=31,
            d_model=32,
            n_heads=4,
            n_layers=n_layers,
            mode=mode,
            max_seq_len=16,
            attention=AttentionConfig(**attention),
        )
        return liven(TransformerLM(cfg)).eval()

    return make


def score_normalisers() -> list[str]:
    """Normalisers that map scores to weights (usable with ``attend_reference``); kernel attention is not."""
    from attnlab.attention import NORMALISERS

    return [n for n in NORMALISERS.names() if not hasattr(NORMALISERS.get(n), "attend")]


def require_supported(causal: bool = True, **attention: Any) -> None:
    """Skip a cross-product test on a pairing the registry rejects (tests/zoo checks the rejection itself)."""
    from attnlab.attention import AttentionSite
    from attnlab.errors import ConfigError

    try:
        AttentionConfig(**attention).check_site(AttentionSite(d_model=32, n_heads=4, causal=causal, seq_len=16))
    except ConfigError as err:
        pytest.skip(f"unsupported pairing: {err}")


@pytest.fixture
def make_supported_lm(make_lm: Callable[..., TransformerLM]) -> Callable[..., TransformerLM]:
    """``make_lm`` for cross-product tests: a pairing the registry rejects skips the test instead."""

    def make(n_layers: int = 2, mode: str = "decoder", **attention: Any) -> TransformerLM:
        require_supported(causal=mode == "decoder", **attention)
        return make_lm(n_layers=n_layers, mode=mode, **attention)

    return make


@pytest.fixture
def native_kernels() -> Any:
    """The compiled CPU kernels (``attnlab.attention.fast.native``), enabled. Where a C++ compiler exists (CI, this
    project's machines) they must build: a build failure fails the test instead of hiding behind a skip."""
    import shutil

    from attnlab.attention.fast import native

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the native kernels cannot be built here")
    enabled = native.ENABLED
    native.ENABLED = True
    try:
        assert native.available(), f"native kernels unavailable: {native.unavailable_reason()}"
        yield native
    finally:
        native.ENABLED = enabled
