"""Claims end to end on tiny experiments: a sweep claim runs through the runner and resumes from the database, a
function claim is measured once, the registry's claims are well formed, and the CLI reports them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.claims.base import Arm, Claim, FunctionExperiment, Measurement, Paper, SweepExperiment
from attnlab.claims.registry import all_claims, select
from attnlab.claims.report import COLUMNS, table_rows, write_claims_report
from attnlab.claims.run import claim_time, measure, recorded, sitting_name
from attnlab.claims.verdict import Rule
from attnlab.cli.main import app
from attnlab.errors import ConfigError
from attnlab.runner.config import SearchConfig, Sweep
from attnlab.runner.store import Store
from attnlab.runner.suite import Suite
from attnlab.train.config import TrainConfig

PAPER = Paper("A paper", "Someone et al.", 2024, "0000.00000")
TINY = Sweep(
    name="claims-tiny",
    tasks=[{"name": "mqar", "vocab": 16, "length": 16, "num_kv_pairs": 2}],
    mechanisms=[{"normaliser": "softmax"}, {"normaliser": "sigmoid"}],
    widths=[16],
    seeds=[0, 1],
    search=SearchConfig(lrs=[1e-3, 3e-3], min_steps=4),
    model={"n_layers": 1, "n_heads": 2},
    train=TrainConfig(steps=12, batch_size=8, eval_every=4, eval_examples=32),
)
SWEEP_CLAIM = Claim(
    "tiny-sweep",
    PAPER,
    "Sigmoid differs from softmax.",
    "§1",
    SweepExperiment(TINY, "loss", Arm("sigmoid", "mqar"), Arm("softmax", "mqar")),
    Rule("loss difference", "within", 10.0),
)


def test_a_sweep_claim_runs_its_search_and_resumes_from_the_database(tmp_path: Path) -> None:
    with Store(tmp_path / "c.sqlite") as store:
        assert recorded(SWEEP_CLAIM, store) is None  # nothing run yet
        first = measure(SWEEP_CLAIM, store, workers=0)
        attempts = {r["run_id"]: r["attempts"] for r in store.runs()}
        again = measure(SWEEP_CLAIM, store, workers=0)
        assert {r["run_id"]: r["attempts"] for r in store.runs()} == attempts  # nothing ran twice
        kept = recorded(SWEEP_CLAIM, store)
    assert len(attempts) == 2 * (2 * 2 + 2)  # 2 mechanisms × (2 rates × 2 seeds to step 4, the best continued)
    assert first.verdict == again.verdict == kept.verdict
    effect = first.verdict.effect
    assert effect.n == 2 and not math.isnan(effect.low)
    per_arm = {row["arm"]: row["per seed"] for row in first.measurement.rows}
    a, b = per_arm["sigmoid on mqar"], per_arm["softmax on mqar"]
    assert first.measurement.values == {s: a[s] - b[s] for s in (0, 1)}  # paired over the shared seeds


def test_a_function_claim_is_measured_once(tmp_path: Path) -> None:
    calls = []

    def run() -> Measurement:
        calls.append(1)
        return Measurement(exact=0.01, rows=[{"x": 1}])

    claim = Claim("tiny-fn", PAPER, "Small.", "§2", FunctionExperiment(run), Rule("ratio", "less", 0.02))
    with Store(tmp_path / "c.sqlite") as store:
        assert recorded(claim, store) is None
        assert measure(claim, store).verdict.outcome == "holds"
        assert measure(claim, store).verdict.outcome == "holds"
        assert recorded(claim, store).verdict.outcome == "holds"
    assert len(calls) == 1


def test_an_arm_that_matches_no_leaderboard_row_is_a_clear_error(tmp_path: Path) -> None:
    claim = Claim("bad-arm", PAPER, "x", "§", SweepExperiment(TINY, "loss", Arm("cog")), Rule("q", "greater"))
    with Store(tmp_path / "c.sqlite") as store:
        measure(SWEEP_CLAIM, store, workers=0)
        with pytest.raises(ConfigError, match="arm='cog': matches 0 leaderboard rows"):
            measure(claim, store, workers=0)


def _labels(sweep: Sweep | Suite) -> set[tuple[str, str]]:
    return {(r.task.name, r.mechanism, r.position) for r in sweep.runs()}


@pytest.mark.parametrize("claim", list(all_claims().values()), ids=lambda c: c.name)
def test_every_registered_claim_is_well_formed(claim: Claim) -> None:
    assert claim.statement.endswith(".") and claim.where and claim.paper.arxiv
    experiment = claim.experiment
    if isinstance(experiment, SweepExperiment):
        labels = _labels(experiment.sweep)
        assert (experiment.a is not None) != (experiment.derive is not None)  # a comparison or a derivation
        for arm in (experiment.a, experiment.b):
            if arm is not None:
                assert any(arm.matches(*label) for label in labels), (arm, sorted(labels))
        assert len(claim.seeds.split(",")) >= 3  # every seeded claim runs at least three seeds


def test_claims_are_selected_by_name() -> None:
    names = list(all_claims())
    assert [c.name for c in select(names[:2])] == names[:2]
    with pytest.raises(ConfigError, match="claim='nope': is not a claim"):
        select(["nope"])


def test_the_cli_lists_and_reports(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["claims", "list"], terminal_width=250)
    assert listed.exit_code == 0 and all(name in listed.output for name in all_claims())
    papers = {c.paper.arxiv for c in all_claims().values()}
    assert f"{len(all_claims())} claims from {len(papers)} papers" in listed.output
    bad = runner.invoke(app, ["claims", "run", "nope", "--db", str(tmp_path / "c.sqlite")])
    assert bad.exit_code == 2 and "claim='nope'" in bad.output
    Store(tmp_path / "c.sqlite").close()
    out = tmp_path / "report"
    reported = runner.invoke(app, ["claims", "report", "--db", str(tmp_path / "c.sqlite"), "--out", str(out)])
    assert reported.exit_code == 0, reported.output
    assert "not run" in (out / "claims.md").read_text() and (out / "claims.html").exists()


def test_the_report_escapes_and_plots(tmp_path: Path) -> None:
    def run() -> Measurement:
        return Measurement(exact=0.5, series={"<b>x</b>": [(0.0, 1.0), (1.0, 2.0)]}, rows=[{"<i>": "<script>"}])

    claim = Claim("html-claim", PAPER, "A <claim>.", "§", FunctionExperiment(run), Rule("q", "less", 1.0))
    with Store(tmp_path / "c.sqlite") as store:
        result = measure(claim, store)
    path = write_claims_report([claim], {claim.name: result}, tmp_path / "r")
    html = (tmp_path / "r" / "claims.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert (tmp_path / "r" / "claim_html-claim.png").exists() and "holds" in path.read_text()


def test_claims_sharing_a_measurement_run_it_once_and_read_their_own_views(tmp_path: Path) -> None:
    calls = []

    def run() -> Measurement:
        calls.append(1)
        return Measurement(rows=[{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 5.0}])

    def view(column: str) -> Callable[[Measurement], Measurement]:
        return lambda m: Measurement(values={i: float(r[column]) for i, r in enumerate(m.rows)})

    claims = [
        Claim(
            f"shared-{c}", PAPER, "x.", "§", FunctionExperiment(run, key="shared", view=view(c)), Rule("q", "greater")
        )
        for c in ("a", "b")
    ]
    with Store(tmp_path / "c.sqlite") as store:
        a, b = (measure(c, store) for c in claims)
        assert recorded(claims[1], store).measurement.values == {0: 3.0, 1: 5.0}
    assert len(calls) == 1
    assert a.measurement.values == {0: 1.0, 1: 2.0} and b.measurement.values == {0: 3.0, 1: 5.0}


def test_two_claims_sharing_a_configuration_share_its_runs(tmp_path: Path) -> None:
    mechanisms = [{"normaliser": "softmax"}, {"normaliser": "relu"}]
    data = TINY.model_dump(exclude={"lrs"})
    other = Sweep.model_validate({**data, "name": "claims-tiny-other", "mechanisms": mechanisms})
    second = Claim(
        "tiny-other",
        PAPER,
        "x.",
        "§",
        SweepExperiment(other, "loss", Arm("relu"), Arm("softmax")),
        Rule("q", "within", 10.0),
    )
    with Store(tmp_path / "c.sqlite") as store:
        measure(SWEEP_CLAIM, store, workers=0)
        before = len(store.runs())
        result = measure(second, store, workers=0)
        assert len(store.runs()) == before + 6  # only relu's runs are new: softmax's are found by id
    assert result.measurement.rows[1]["seeds"] == 2


def test_a_claims_time_adds_up_over_its_sittings_an_interrupted_one_included(tmp_path: Path) -> None:
    calls = []

    def run() -> Measurement:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the first sitting is stopped mid-way
        return Measurement(exact=0.01)

    claim = Claim("timed", PAPER, "Small.", "§2", FunctionExperiment(run), Rule("ratio", "less", 0.02))
    with Store(tmp_path / "c.sqlite") as store:
        assert claim_time("timed", store) is None  # never ran here
        with pytest.raises(KeyboardInterrupt):
            measure(claim, store)
        result = measure(claim, store)
        sittings = store.sittings(sitting_name("timed"))
        total = claim_time("timed", store)
    assert [s["ended"] for s in sittings] == ["interrupted", "finished"]
    assert total == pytest.approx(sum(s["wall_s"] for s in sittings)) and total >= 0.0
    assert result.verdict.outcome == "holds"
    row = table_rows([claim, SWEEP_CLAIM], {"timed": result}, {"timed": 3725.0})
    assert row[0][COLUMNS.index("time")] == "1 h 2 min 5 s" and row[1][COLUMNS.index("time")] == "–"
    assert row[1][COLUMNS.index("verdict")] == "not run"


def test_a_sweep_claims_sitting_is_touched_after_every_run(tmp_path: Path) -> None:
    touched = []
    with Store(tmp_path / "c.sqlite") as store:
        measure(SWEEP_CLAIM, store, workers=0, on_done=lambda run, result: touched.append(run.run_id))
        (sitting,) = store.sittings(sitting_name(SWEEP_CLAIM.name))
    assert len(touched) == 2 * (2 * 2 + 2) and sitting["ended"] == "finished"
    assert sitting["finished_at"] >= sitting["started_at"]


def test_the_results_report_of_a_claims_database_has_the_claims_section(tmp_path: Path) -> None:
    """``attnlab report`` on a database that ``attnlab claims run`` wrote to ends with the claims' table and
    sections; on any other database it has none."""
    name = next(iter(all_claims()))
    with Store(tmp_path / "claims.sqlite") as store:
        store.touch_sitting(store.begin_sitting(sitting_name(name), 1, 1), "finished")
    Store(tmp_path / "bench.sqlite").close()
    runner = CliRunner()
    for db, has_claims in (("claims", True), ("bench", False)):
        out = tmp_path / f"{db}-report"
        result = runner.invoke(app, ["report", str(tmp_path / f"{db}.sqlite"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
        assert ("## Claims" in md and f"### {name}" in md) == has_claims
        assert (f"attnlab claims run {name}" in html) == has_claims
