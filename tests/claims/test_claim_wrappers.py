"""The function experiments of the SmolLM2 claims, with the model and the experiment replaced by fakes: each wrapper
calls its experiment with the documented settings and stores what its claims' views read (no model is run)."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from attnlab.claims.papers import _kv, _prefill, act, lofit, pine, yarn
from attnlab.claims.registry import all_claims
from attnlab.claims.run import effect_of
from attnlab.claims.verdict import decide
from attnlab.experiments import act as act_experiment
from attnlab.experiments import longctx_kv, rope_scaling, sparse_prefill, text
from attnlab.experiments import pine as pine_experiment
from attnlab.lens.pretrained import smollm2


class FakeTokenizer:
    def encode(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(ids=list(range(len(text))))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the SmolLM2 loader by a fake model and tokenizer; records the experiments' arguments."""
    recorded: dict[str, Any] = {}
    monkeypatch.setattr(smollm2, "load_smollm2", lambda: ("model", FakeTokenizer()))
    monkeypatch.setattr(text, "text_chunks", lambda tok, n, k, from_end=False: ("chunks", n, k, from_end))
    monkeypatch.setattr(text, "text_tokens", lambda tok, n, offset=0: torch.zeros(1, n, dtype=torch.long))
    return recorded


def verdict(name: str, stored: Any) -> str:
    claim = all_claims()[name]
    return decide(claim.rule, effect_of(claim, claim.experiment.measurement_of(stored))).outcome  # type: ignore[union-attr]


def test_the_kv_measurement_runs_every_policy_at_both_ratios(monkeypatch, calls) -> None:
    def table(model, tok, lengths, ratios, names):
        calls["args"] = (model, lengths, tuple(ratios), tuple(names))
        rows = [longctx_kv.KVRow("ppl", 4096, "full", 0.0, 1.0, 14.9, 1.0, 1.0)]
        rows += [longctx_kv.KVRow("ppl", 4096, p, r, 1 - r, 15.0, 1.0, 1.0) for p in names for r in ratios]
        rows += [longctx_kv.KVRow("passkey", 4096, "full", 0.0, 1.0, 1.0, 1.0, 1.0, "11111")]
        rows += [longctx_kv.KVRow("passkey", 4096, p, r, 1 - r, 0.4, 1.0, 1.0, "00011") for p in names for r in ratios]
        return rows

    monkeypatch.setattr(longctx_kv, "longctx_kv_table", table)
    m = _kv.kv_policies()
    assert calls["args"] == ("model", [4096], (0.5, 0.75), _kv.POLICIES)
    assert len(m.rows) == 2 * (1 + len(_kv.POLICIES) * 2) and m.rows[-1]["by depth"] == "00011"
    assert verdict("snapkv-keeps-retrieval-at-half-cache", m) == "does not hold"  # 1.0 − 0.4
    assert verdict("snapkv-keeps-perplexity-at-half-cache", m) == "holds"  # log(15 / 14.9)


def test_the_prefill_measurement_runs_dense_vertical_slash_and_hip(monkeypatch, calls) -> None:
    def table(model, tok, lengths, patterns, budgets, *, repeats, log):
        calls["args"] = (lengths, tuple(patterns), budgets, repeats)
        return [
            sparse_prefill.PrefillRow(4096, p, 1024, 0.5, 17.8, 29.1, 19.7, 0.37, 10.86, 1.0026, "rope")
            for p in patterns
        ]

    monkeypatch.setattr(sparse_prefill, "prefill_table", table)
    m = _prefill.sparse_prefill()
    assert calls["args"] == ([4096], ("dense", "vertical-slash", "hip"), [1024], 3)
    assert _prefill.column(m, "hip", "speed-up") == 0.37
    assert verdict("minference-speeds-up-prefill", m) == "does not hold"
    assert verdict("minference-vertical-slash-keeps-perplexity", m) == "holds"


def test_the_rope_scaling_measurement_passes_16k_tokens_per_method(monkeypatch, calls) -> None:
    def table(model, tokens, methods, lengths):
        calls["args"] = (tokens.shape, tuple(methods), tuple(lengths))
        ppl = {"none": 27.9, "pi": 30.9, "yarn": 10.1}
        return [
            rope_scaling.ScalingRow(name, f, n, ppl[name], ppl[name] + 1, 60.0) for name, f in methods for n in lengths
        ]

    monkeypatch.setattr(rope_scaling, "rope_scaling_table", table)
    m = yarn.rope_scaling_16k()
    assert calls["args"] == ((1, 16384), yarn.METHODS, yarn.LENGTHS)
    assert yarn.beyond_training(m, "pi") == pytest.approx(31.9)
    assert verdict("yarn-beats-pi-without-finetuning", m) == "holds"


def test_the_act_measurement_is_the_searched_heads_against_none(monkeypatch, calls) -> None:
    def experiment(model, calib, held):
        calls["args"] = (calib, held)
        rows = [("none", [], 3.10, 3.1087, 0), ("every head with a hidden sink", [(2, 0)] * 182, 3.2, 3.1844, 9)]
        rows.append((act.KEPT, [(2, 0)] * 78, 3.0, 3.1066, 5))
        return SimpleNamespace(rows=rows)

    monkeypatch.setattr(act_experiment, "act_experiment", experiment)
    m = act.act_on_smollm2()
    assert calls["args"] == (("chunks", 128, 2, False), ("chunks", 128, 8, True))
    assert m.exact == pytest.approx(3.1066 - 3.1087) and [r["count"] for r in m.rows] == [0, 182, 78]


def test_the_pine_measurement_keeps_accuracy_by_position_and_flip_rates(monkeypatch, calls) -> None:
    def bias(model, prompts):
        calls["prompts"] = prompts
        plain = torch.tensor([[1, 2, 1, 1, 1]] * 4)
        predictions = {"plain": plain, "pine": torch.full((4, 5), 7)}
        return pine_experiment.PositionBias(predictions, torch.ones(4, dtype=torch.long))

    monkeypatch.setattr(pine_experiment, "retrieval_prompts", lambda tok, docs, n, seed: ("prompts", docs, n, seed))
    monkeypatch.setattr(pine_experiment, "position_bias", bias)
    m = pine.pine_on_smollm2()
    assert calls["prompts"] == ("prompts", 5, 20, 0)
    assert [r["position"] for r in m.rows] == ["0", "1", "2", "3", "4", "mean", "flip rate"]
    assert m.rows[-1] == {"position": "flip rate", "plain": 1.0, "PINE": 0.0}
    assert m.rows[-2]["plain"] == pytest.approx(0.8) and m.rows[-2]["PINE"] == 0.0
    assert verdict("pine-removes-position-bias", m) == "holds"
    assert verdict("pine-improves-accuracy", m) == "does not hold"


def test_the_lofit_measurement_trains_per_seed_on_lofit_and_random_heads(monkeypatch, calls) -> None:
    from attnlab.experiments import lofit as lofit_experiment
    from attnlab.experiments import pear
    from attnlab.lens import copy_task, interventions

    state = {"edit": None}
    losses = {"none": 3.0, "lofit": 0.4, "random": 1.6}

    class Edits:
        def __init__(self, heads):
            self.kind = "lofit" if heads == [(19, 3)] else "random"

        @contextmanager
        def deployed(self, model):
            state["edit"] = self.kind
            yield
            state["edit"] = None

    trained = []
    monkeypatch.setattr(pear, "held_out_batch", lambda task, n, seed: ("held", n, seed))
    monkeypatch.setattr(lofit_experiment, "lofit_selection", lambda m, t, k, seed: SimpleNamespace(heads=[(19, 3)]))
    monkeypatch.setattr(interventions, "random_heads", lambda m, k, seed: [(seed % 30, 1)])

    def offsets(model, heads, task, seed):
        trained.append((tuple(heads), seed))
        return Edits(heads), []

    monkeypatch.setattr(lofit_experiment, "lofit_offsets", offsets)
    monkeypatch.setattr(
        copy_task, "measure_copy", lambda m, held, task: copy_task.CopyScores(0.0, losses[state["edit"] or "none"], 0.5)
    )
    m = lofit.lofit_on_smollm2()
    drawn = [((s + lofit.RANDOM_SEED_OFFSET) % 30, 1) for s in (0, 1, 2)]
    assert trained == [item for s in (0, 1, 2) for item in ((((19, 3),), s), ((drawn[s],), s))]
    assert [r["seed"] for r in m.rows] == [0, 1, 2] and m.rows[0]["LoFiT heads"] == 0.4
    assert m.rows[0]["random heads"] == 1.6 and m.rows[0]["no change"] == 3.0 and m.rows[0]["LoFiT's heads"] == "L19H3"
    view = all_claims()["lofit-head-selection-matters"].experiment.measurement_of(m)  # type: ignore[union-attr]
    assert view.values == pytest.approx({0: 1.2, 1: 1.2, 2: 1.2})
