"""Wang et al. 2025, "Eliminating Position Bias of Language Models: A Mechanistic Approach" (PINE, ICLR 2025,
arXiv:2407.01100; code wzq016/PINE).

Position bias comes from causal attention and from RoPE; making the documents of a prompt see each other and
placing them by their attention (not by their order) makes the output independent of the documents' order, and the
authors report that this improves performance on tasks with several documents (abstract, §3–4). Tested with
``attnlab intervene pine smollm2``'s defaults (``experiments.pine``): 20 key–value retrieval prompts of 5 records,
each run with the asked record at every position, plain and under PINE; the flip rate (the share of prompts whose
answer changes with the position) and the accuracy. One deterministic run (seed 0).

Time: no time was printed for ``attnlab intervene pine``; it runs 100 plain and 100 PINE forward passes over prompts
of about 60 tokens, PINE's several times a plain one's (per-query rotations in query chunks): estimated at about 5
minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable

from attnlab.claims.base import Claim, FunctionExperiment, Measurement, Paper
from attnlab.claims.verdict import Rule

PAPER = Paper(
    "Eliminating Position Bias of Language Models: A Mechanistic Approach",
    "Wang et al.",
    2025,
    "2407.01100",
    "https://github.com/wzq016/PINE",
)
DOCS, PROMPTS, SEED = 5, 20, 0
KEY = "pine-smollm2-retrieval"
SCALE = (
    "SmolLM2-135M on 20 synthetic key–value prompts of 5 records; the paper evaluates 7B–70B models on LLM-as-a-judge "
    "and retrieval-augmented QA."
)


def pine_on_smollm2() -> Measurement:
    """Accuracy by the answer's position, plain and under PINE, and the two flip rates (the last rows)."""
    from attnlab.experiments.pine import position_bias, retrieval_prompts
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    result = position_bias(model, retrieval_prompts(tok, DOCS, PROMPTS, SEED))
    plain, pine = result.accuracy("plain"), result.accuracy("pine")
    rows: list[dict[str, object]] = [
        {"position": str(g), "plain": a, "PINE": b} for g, (a, b) in enumerate(zip(plain, pine, strict=True))
    ]
    rows.append({"position": "mean", "plain": sum(plain) / len(plain), "PINE": sum(pine) / len(pine)})
    rows.append({"position": "flip rate", "plain": result.flip_rate("plain"), "PINE": result.flip_rate("pine")})
    return Measurement(rows=rows)


def _row(m: Measurement, position: str) -> dict[str, object]:
    return next(r for r in m.rows if r["position"] == position)


def _view(effect: Callable[[Measurement], float]) -> Callable[[Measurement], Measurement]:
    def view(m: Measurement) -> Measurement:
        by_position = [r for r in m.rows if str(r["position"]).isdigit()]
        series = {
            which: [(float(r["position"]), float(r[which])) for r in by_position]  # type: ignore[arg-type]
            for which in ("plain", "PINE")
        }
        return Measurement(
            exact=effect(m), rows=m.rows, series=series, xlabel="position of the answer's record", ylabel="accuracy"
        )

    return view


def _experiment(effect: Callable[[Measurement], float]) -> FunctionExperiment:
    return FunctionExperiment(
        pine_on_smollm2, seeds="none: one deterministic run (seed 0)", key=KEY, view=_view(effect)
    )


CLAIMS = [
    Claim(
        name="pine-removes-position-bias",
        paper=PAPER,
        statement="Under PINE the answer no longer changes when the documents are reordered.",
        where="abstract, §3",
        experiment=_experiment(lambda m: float(_row(m, "flip rate")["PINE"])),  # type: ignore[arg-type]
        rule=Rule("flip rate under PINE: share of prompts whose answer depends on the record's position", "less", 0.05),
        scale_note=SCALE,
    ),
    Claim(
        name="pine-improves-accuracy",
        paper=PAPER,
        statement="Removing position bias with PINE raises the accuracy of retrieval over several documents.",
        where="abstract, §4",
        experiment=_experiment(
            lambda m: float(_row(m, "mean")["PINE"]) - float(_row(m, "mean")["plain"])  # type: ignore[arg-type]
        ),
        rule=Rule("key–value retrieval accuracy, PINE − plain, mean over the 5 positions", "greater", 0.0),
        scale_note=SCALE,
    ),
]
