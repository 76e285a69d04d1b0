"""Invariants every registry entry must satisfy, parametrised over the whole registry.

A new entry is covered without new test code: each entry is built with its ``example`` arguments and the
other axes at their plain defaults, and checked against what its capability record claims. The checks are the
library's (``attnlab.checks``), the same ones ``attnlab check`` runs on a user's entries: one implementation, so a
user's mechanism gets the zoo's scrutiny and the zoo gets the same as a user's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attnlab import checks
from attnlab.checks import AXES
from attnlab.registry import Entry

ENTRIES = [(axis, e) for axis, (registry, _key) in AXES.items() for e in registry.entries()]
IDS = [f"{axis}-{e.name}" for axis, e in ENTRIES]


def holds(check: Callable[[str, Entry], None], axis: str, entry: Entry) -> None:
    """Run one check; one that does not apply to this entry is a skip with its reason."""
    try:
        check(axis, entry)
    except checks.NotApplicable as why:
        pytest.skip(f"{entry.name}: {why}")


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_entry_trains_forward_and_backward_in_a_causal_model(axis, entry) -> None:
    holds(checks.check_trains, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_entry_is_causal_when_it_claims_to_be(axis, entry) -> None:
    holds(checks.check_causal, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_kv_cache_decoding_equals_the_full_pass_or_is_rejected(axis, entry) -> None:
    holds(checks.check_kv_cache, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_non_causal_use_runs_or_is_rejected_at_config_time(axis, entry) -> None:
    holds(checks.check_non_causal, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_cross_attention_runs_or_is_rejected(axis, entry) -> None:
    holds(checks.check_cross, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_gradcheck_of_the_attention_layer_in_float64(axis, entry) -> None:
    holds(checks.check_gradcheck, axis, entry)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_a_bfloat16_autocast_forward_is_finite(axis, entry) -> None:
    holds(checks.check_bf16, axis, entry)


NORMALISER_ENTRIES = [e for axis, e in ENTRIES if axis == "normaliser"]


@pytest.mark.parametrize("entry", NORMALISER_ENTRIES, ids=[e.name for e in NORMALISER_ENTRIES])
def test_weights_keep_the_row_sum_sign_and_mask_claims(entry) -> None:
    """Weights read at hook_pattern: future keys exactly 0; rows sum to 1 if row-stochastic; ≥ 0 unless signed."""
    for check in (checks.check_masking, checks.check_row_sums, checks.check_sign):
        holds(check, "normaliser", entry)


@pytest.mark.parametrize("entry", NORMALISER_ENTRIES, ids=[e.name for e in NORMALISER_ENTRIES])
def test_every_declared_backend_equals_the_reference(entry) -> None:
    holds(checks.check_backends, "normaliser", entry)


def test_a_leaking_normaliser_fails_the_checks() -> None:
    """The checks can fail: a normaliser that forgets the mask breaks causality, masking and the KV cache."""
    from torch import Tensor

    from attnlab.attention.normalisers.base import NoParams, NormaliserBase
    from attnlab.registry import Capabilities

    class Leaky(NormaliserBase):
        def __init__(self, params: object = None, site: object = None):
            super().__init__()

        def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
            return scores.softmax(-1)

    from attnlab.attention import NORMALISERS

    NORMALISERS.register("zoo_test_leaky", params=NoParams, row_stochastic=True)(Leaky)
    try:
        entry = NORMALISERS.entry("zoo_test_leaky")
        assert isinstance(entry.capabilities, Capabilities)
        for check in (checks.check_causal, checks.check_masking, checks.check_kv_cache):
            with pytest.raises(checks.CheckFailed):
                check("normaliser", entry)
        checks.check_row_sums("normaliser", entry)  # its rows do sum to 1
    finally:
        NORMALISERS._entries.pop("zoo_test_leaky")
