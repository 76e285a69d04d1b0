"""The ``positions`` preset: it loads by name and plans the runs its docstring promises (arithmetic formats at 1× and
2× with the whole-answer metric, MEAP off / on and causal cross-attention off / on over the same five seeds), and
the arms of each comparison land in separate leaderboard rows of five seeds each. Nothing is trained here: the
leaderboard check records made-up final metrics through the store's public API."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from attnlab.report.tables import leaderboard
from attnlab.runner.config import RunConfig
from attnlab.runner.store import Store
from attnlab.runner.suite import Suite
from attnlab.sweeps import load_sweep, preset_names
from attnlab.sweeps.positions import MEAP_FRACTION

SEEDS = (0, 1, 2, 3, 4)


def runs() -> list[RunConfig]:
    suite = load_sweep("positions")
    assert isinstance(suite, Suite) and suite.name == "positions" and "positions" in preset_names()
    return suite.runs()


def without(run: RunConfig, *fields: str) -> dict:
    """The run's canonical config without the dotted ``fields`` (and the seed)."""
    config = json.loads(run.canonical_json())
    config.pop("seed")
    for name in fields:
        *path, last = name.split(".")
        node = config
        for key in path:
            node = node[key]
        node.pop(last, None)
    return config


def test_the_preset_plans_every_comparison_over_three_seeds() -> None:
    planned = runs()
    # 6 arithmetic tasks + MQAR and passkey × MEAP off / on + 2 delays × causal cross off / on = 14, × 5 seeds
    assert len(planned) == len({r.run_id for r in planned}) == 70
    assert {r.sweep for r in planned} == {"positions"}
    groups = Counter((r.task.model_dump_json(), r.canonical_json().replace(f'"seed":{r.seed}', "")) for r in planned)
    assert set(groups.values()) == {5}  # every configuration over seeds 0 … 4
    assert {r.seed for r in planned} == set(SEEDS)
    assert {r.mechanism for r in planned} == {"softmax"} and {r.position for r in planned} == {"rope"}
    assert all(r.train.target_accuracy is None for r in planned)  # both arms of a comparison train as long


def test_arithmetic_runs_every_format_at_1x_and_2x_with_the_whole_answer_metric() -> None:
    arithmetic = [r for r in runs() if r.task.name in ("addition", "multiplication")]
    formats = {(r.task.name, r.task.format) for r in arithmetic}
    assert formats == {(t, f) for t in ("addition", "multiplication") for f in ("plain", "reversed", "index_hints")}
    for run in arithmetic:
        assert run.train.extrapolate == [2.0] and run.task.sequence_metric
        assert run.task.with_length(2 * run.task.seq_len).digits > run.task.digits  # longer operands at 2×
    assert not any(r.task.sequence_metric for r in runs() if r not in arithmetic)


def test_meap_arms_differ_only_in_the_mask_fraction_and_the_mask_token() -> None:
    meap = [r for r in runs() if r.task.name in ("mqar", "passkey")]
    assert {r.train.meap_mask_fraction for r in meap} == {0.0, MEAP_FRACTION} and MEAP_FRACTION == 0.15
    for task in ("mqar", "passkey"):
        off = sorted((r for r in meap if r.task.name == task and not r.train.meap_mask_fraction), key=lambda r: r.seed)
        on = sorted((r for r in meap if r.task.name == task and r.train.meap_mask_fraction), key=lambda r: r.seed)
        assert [r.seed for r in off] == [r.seed for r in on] == list(SEEDS)
        for a, b in zip(off, on, strict=True):
            assert b.model.vocab_size == a.model.vocab_size + 1 == a.task.vocab_size + 1
            fields = ("train.meap_mask_fraction", "model.vocab_size")
            assert without(a, *fields) == without(b, *fields)


def test_causal_cross_arms_differ_only_in_the_cross_attention_pattern() -> None:
    cross = [r for r in runs() if r.task.name == "prefix_sum"]
    assert Counter((r.task.delay, r.model.causal_cross) for r in cross) == {
        (d, c): 5 for d in (0, 3) for c in (False, True)
    }
    assert all(r.model.mode == "encoder_decoder" and r.train.extrapolate == [2.0] for r in cross)
    off = sorted((r for r in cross if not r.model.causal_cross), key=lambda r: (r.task.delay, r.seed))
    on = sorted((r for r in cross if r.model.causal_cross), key=lambda r: (r.task.delay, r.seed))
    for a, b in zip(off, on, strict=True):
        assert a.seed == b.seed and without(a, "model.causal_cross") == without(b, "model.causal_cross")


def test_each_arm_is_a_leaderboard_row_of_three_seeds_with_a_paired_test(tmp_path: Path) -> None:
    planned = runs()
    with Store(tmp_path / "positions.sqlite") as store:
        store.enqueue(planned)
        for run in planned:  # made-up metrics: only the grouping is under test
            store.start(run.run_id)
            value = 0.5 + run.seed / 10 + (0.1 if run.train.meap_mask_fraction or run.model.causal_cross else 0.0)
            final = {"accuracy": value, "loss": 1.0 - value / 2}
            if run.task.sequence_metric:
                final |= {"exact_match": value / 2, "accuracy@2x": value / 3, "exact_match@2x": value / 4}
            store.finish(run.run_id, final, [])
        entries = leaderboard(store.runs())
    by_task = Counter(e.task for e in entries)
    formats = ("plain", "reversed", "index_hints")
    arithmetic = {f"{t}[format={f}]" for t in ("addition", "multiplication") for f in formats}
    compared = ("mqar", "passkey", "prefix_sum[delay=0]", "prefix_sum[delay=3]")
    assert by_task == {**dict.fromkeys(arithmetic, 1), **dict.fromkeys(compared, 2)}
    assert all(e.seeds == 5 and e.interval.has_interval for e in entries)
    for task in compared:
        pair = [e for e in entries if e.task == task]
        assert len({e.mechanism for e in pair}) == 2 and all(e.versus is not None for e in pair)
    assert "train.meap_mask_fraction=0.15" in next(e.mechanism for e in entries if e.task == "mqar" and e.score > 0.75)
