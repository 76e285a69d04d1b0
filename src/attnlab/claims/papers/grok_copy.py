"""Lv et al. 2025, "Language Models "Grok" to Copy" (NAACL 2025, arXiv:2409.09281).

Copying is learned like grokking: the loss falls early while copying accuracy lags and then rises abruptly; and
the induction heads that copy form in shallow layers before deep ones (abstract, §3–4). Tested on attnlab's
copying task (accuracy curves of three seeds) and on its induction task with a 4-layer attention-only model whose
per-layer induction scores are probed at every evaluation (``train.probes``).
"""

from __future__ import annotations

import itertools
import math
import re

from scipy import stats

from attnlab.claims.base import Claim, Curves, Measurement, Paper, Rows, SweepExperiment
from attnlab.claims.verdict import Rule
from attnlab.runner.config import Sweep
from attnlab.stats.emergence import emergence_step
from attnlab.train.config import TrainConfig

PAPER = Paper(
    'Language Models "Grok" to Copy', "Lv et al.", 2025, "2409.09281", "https://github.com/lvkaokao/grok-copy"
)
SEEDS = [0, 1, 2]
WINDOW = 0.1  # abruptness: the largest accuracy gain within any tenth of the run, over the whole gain
INDUCTION_THRESHOLD = 0.3  # a layer "has" an induction head once its best head's score stays above this

COPYING = Sweep(
    name="claims-grok-copying",
    tasks=[{"name": "copying", "vocab": 32, "span": 8, "length": 32}],
    mechanisms=[{"normaliser": "softmax"}],
    widths=[64],
    lrs=[1e-3],
    seeds=SEEDS,
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=2000, batch_size=64, eval_every=50, eval_examples=256),
)
INDUCTION = Sweep(
    name="claims-grok-induction",
    tasks=[{"name": "induction", "vocab": 64, "half": 16}],
    mechanisms=[{"normaliser": "softmax"}],
    widths=[64],
    lrs=[1e-3],
    seeds=SEEDS,
    model={"n_layers": 4, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=2000, batch_size=64, eval_every=50, eval_examples=256, probes=True),
)


def abruptness(curve: list[tuple[int, float]], window: int) -> float:
    """The largest rise of accuracy between two evaluations at most ``window`` steps apart, as a share of the rise
    from the first evaluation to the best; NaN when the run gained less than 0.2 (nothing was learned)."""
    gain = max(a for _, a in curve) - curve[0][1]
    if gain < 0.2:
        return math.nan
    jumps = [b - a for (s, a), (t, b) in itertools.combinations(curve, 2) if t - s <= window]
    return max(jumps) / gain


def copying_abruptness(rows: Rows, curves: Curves) -> Measurement:
    values, series = {}, {}
    for row in rows:
        curve = sorted((s, v) for s, name, v in curves[row["run_id"]] if name == "eval_accuracy")
        values[row["seed"]] = abruptness(curve, int(WINDOW * COPYING.train.steps))
        series[f"seed {row['seed']}"] = [(float(s), v) for s, v in curve]
    rows_out: list[dict[str, object]] = [{"seed": s, "abruptness": v} for s, v in sorted(values.items())]
    return Measurement(values=values, rows=rows_out, series=series, xlabel="step", ylabel="copying accuracy")


LAYER_CURVE = re.compile(r"probe/induction/L(\d+)")


def induction_order(rows: Rows, curves: Curves) -> Measurement:
    """Per seed: the Spearman correlation between a layer's depth and the step its induction score first held
    above the threshold for two evaluations, over the layers where it did (the first layer of an attention-only
    model cannot host one: an induction head composes with a previous-token head below it); NaN when fewer than
    two layers formed one."""
    values: dict[int, float] = {}
    out: list[dict[str, object]] = []
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_layer: dict[int, list[tuple[int, float]]] = {}
        for step, name, value in curves[row["run_id"]]:
            if m := LAYER_CURVE.fullmatch(name):
                by_layer.setdefault(int(m.group(1)), []).append((step, value))
        steps = {layer: emergence_step(sorted(c), INDUCTION_THRESHOLD, hold=2) for layer, c in by_layer.items()}
        layers = sorted(steps)
        formed = [layer for layer in layers if not math.isnan(steps[layer])]
        order = [steps[layer] for layer in formed]
        values[row["seed"]] = float(stats.spearmanr(formed, order).statistic) if len(set(order)) > 1 else math.nan
        out.append({"seed": row["seed"], **{f"L{layer} step": steps[layer] for layer in layers}})
        for layer in layers:
            series.setdefault(f"L{layer}", []).append((float(row["seed"]), steps[layer]))
    return Measurement(values=values, rows=out, series=series, xlabel="seed", ylabel="induction head forms (step)")


SCALE = (
    "Attention-only models of width 64 on synthetic tasks, 2000 steps; the paper pre-trains a 12-layer LLaMA on "
    "40B tokens."
)

CLAIMS = [
    Claim(
        name="copying-is-learned-abruptly",
        paper=PAPER,
        statement="Copying accuracy rises abruptly: most of its gain happens within a short stretch of training.",
        where="abstract, §3",
        experiment=SweepExperiment(COPYING, derive=copying_abruptness),
        rule=Rule("largest accuracy gain within a tenth of the run / the whole gain", "greater", 0.5),
        scale_note=SCALE,
    ),
    Claim(
        name="induction-heads-form-shallow-first",
        paper=PAPER,
        statement="Induction heads form in shallow layers before deep ones.",
        where="abstract, §4",
        experiment=SweepExperiment(INDUCTION, derive=induction_order),
        rule=Rule("Spearman correlation of layer depth with the step its induction head forms", "greater", 0.0),
        scale_note=SCALE,
    ),
]
