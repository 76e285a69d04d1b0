"""Yin, Ye & Durrett 2024, "LoFiT: Localized Fine-tuning on LLM Representations" (NeurIPS 2024, arXiv:2406.01563;
code fc2869/lo-fit).

Learning offset vectors on the outputs of a few attention heads, chosen by a first step of L1-penalised scaling
vectors, adapts a frozen model to a task; the choice of heads matters: the abstract reports that task-specific
heads do better than heads selected for a different task (this test compares random heads instead). Tested with
``experiments.lofit``'s two steps (``lofit_selection`` then ``lofit_offsets``, the defaults of ``attnlab intervene
lofit smollm2``: K = 10 of 270 heads, 40 steps each, batch 4) on PEAR's copying proxy with SmolLM2-135M, for
training seeds 0, 1, 2, each measured on its own held-out set (``pear.held_out_batch``): held-out copying loss with
the offsets on LoFiT's heads, and with offsets learned the same way on 10 random heads (the ``--controls`` draw).

Time: per seed three 40-step trainings of the frozen 135M model on batches of 4 × 51 tokens; the full
``attnlab intervene lofit`` (five such trainings and path patching) printed user 3m56s, so about 2.5 minutes of one
core per seed, 8 minutes for the three seeds.
"""

from __future__ import annotations

from collections.abc import Callable

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "LoFiT: Localized Fine-tuning on LLM Representations",
    "Yin, Ye & Durrett",
    2024,
    "2406.01563",
    "https://github.com/fc2869/lo-fit",
)
K, EVAL_BATCH, SEEDS = 10, 32, (0, 1, 2)
RANDOM_SEED_OFFSET = 6_000_003  # lofit_experiment's draw of the control heads (controls=True)
KEY = "lofit-smollm2-copying"
SCALE = (
    "SmolLM2-135M on a copying proxy, 40 steps per step of LoFiT; the paper fine-tunes Llama 2 7B/13B and Gemma 7B on "
    "TruthfulQA, MQuAKE and CLUTRR."
)


def lofit_on_smollm2() -> Measurement:
    """Per seed: held-out copying loss without change, with LoFiT's offsets, with offsets on K random heads."""
    from attnlab.experiments.lofit import lofit_offsets, lofit_selection
    from attnlab.experiments.pear import held_out_batch
    from attnlab.lens.copy_task import CopyTask, measure_copy
    from attnlab.lens.inspect import MODEL_INFO
    from attnlab.lens.interventions import head_label, random_heads
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, _ = load_smollm2()
    info = MODEL_INFO["smollm2"]
    task = CopyTask(n=25, low=info["low"], high=info["high"], bos=info["bos"])
    rows: list[dict[str, object]] = []
    for seed in SEEDS:
        held = held_out_batch(task, EVAL_BATCH, seed)
        row: dict[str, object] = {"seed": seed, "no change": measure_copy(model, held, task).copy_loss}
        chosen = lofit_selection(model, task, K, seed=seed).heads
        drawn = random_heads(model, K, seed + RANDOM_SEED_OFFSET)
        for label, heads in (("LoFiT heads", chosen), ("random heads", drawn)):
            edits, _ = lofit_offsets(model, heads, task, seed=seed)
            with edits.deployed(model):
                row[label] = measure_copy(model, held, task).copy_loss
        row["LoFiT's heads"] = " ".join(head_label(h) for h in chosen)
        rows.append(row)
    return Measurement(rows=rows)


def _view(a: str, b: str) -> Callable[[Measurement], Measurement]:
    """Per seed: held-out copying loss of ``a`` − that of ``b``."""

    def view(m: Measurement) -> Measurement:
        values = {int(r["seed"]): float(r[a]) - float(r[b]) for r in m.rows}  # type: ignore[arg-type]
        series = {
            name: [(float(r["seed"]), float(r[name])) for r in m.rows]  # type: ignore[arg-type]
            for name in ("no change", "LoFiT heads", "random heads")
        }
        return Measurement(values=values, rows=m.rows, series=series, xlabel="seed", ylabel="held-out copying loss")

    return view


def _experiment(a: str, b: str) -> FunctionExperiment:
    return FunctionExperiment(lofit_on_smollm2, seeds="0, 1, 2", key=KEY, view=_view(a, b))


CLAIMS = [
    Claim(
        name="lofit-adapts-a-frozen-model",
        paper=PAPER,
        statement="Offsets learned on the outputs of a few selected heads improve a frozen model on the task.",
        where="abstract",
        experiment=_experiment("LoFiT heads", "no change"),
        rule=Rule("held-out copying loss, LoFiT (10 heads) − no change, nats/token (SmolLM2-135M)", "less", 0.0),
        scale_note=SCALE,
    ),
    Claim(
        name="lofit-head-selection-matters",
        paper=PAPER,
        statement="The same offsets learned on randomly chosen heads improve the task less than on LoFiT's heads.",
        where="abstract (the localisation step matters)",
        experiment=_experiment("random heads", "LoFiT heads"),
        rule=Rule(
            "held-out copying loss, offsets on 10 random heads − on LoFiT's 10 heads, nats/token", "greater", 0.0
        ),
        scale_note=SCALE,
    ),
]
