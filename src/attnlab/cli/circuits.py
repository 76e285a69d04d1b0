"""``attnlab circuits``: find a task's circuit in a pretrained model with the lens (``attnlab circuits ioi smollm2``).

``ioi`` (indirect object identification), ``recall`` (memory against a counterfactual context) and ``mcq``
(multiple choice with the answer moved across A–D). The logic lives in ``attnlab.experiments`` (``ioi``,
``recall``, ``mcq``: measurements and head selection) and ``attnlab.experiments.prompts`` (the prompt sets); this
module checks the options, loads the model, prints the tables and writes the CSV, the heatmaps and (recall, mcq)
``summary.md``. Bad input exits with status 2 and one line
``error: field=value: problem (allowed: ...)``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.options import output_folder
from attnlab.errors import ConfigError

circuits_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find task circuits with the lens.")

# the models the command loads, with the ids their prompts start and are padded with (the GGUF's bos / padding)
MODELS: dict[str, dict[str, int]] = {"smollm2": {"bos": 1, "pad": 2}}


def _load(model: str, threads: int | None, out: Path) -> tuple[float, Any, Any]:
    """What every circuits command does once its options are checked: the output folder, the thread count, the
    clock, the model → (start time, model, tokenizer)."""
    import torch

    output_folder("out", out)
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    return (t0, *load_model(model))


def load_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a name of ``MODELS``."""
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    try:
        return load_smollm2()
    except (FileNotFoundError, ImportError) as err:
        raise ConfigError("model", name, f"cannot load: {err}") from None


def _heads(result: Any, heads: list, key: str) -> str:
    from attnlab.lens.interventions import head_label

    grid = getattr(result, key)
    return ", ".join(f"{head_label(h)} ({float(grid[h]):+.3f})" for h in heads) or "none found"


def write_csv(path: Path, rows: list[dict]) -> Path:
    """``rows`` (dicts with the same keys) as a CSV file with a header; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def head_rows(**grids: Any) -> list[dict]:
    """One row per head of [L, H] score grids (named by the keywords): ``head``, ``layer``, ``index``, each score."""
    n_layers, n_heads = next(iter(grids.values())).shape
    return [
        {"head": f"L{layer}H{h}", "layer": layer, "index": h, **{k: float(g[layer, h]) for k, g in grids.items()}}
        for layer in range(n_layers)
        for h in range(n_heads)
    ]


def write_ioi(result: Any, out: Path, model_name: str) -> list[Path]:
    """``heads.csv`` (``IOIResult.rows``) and one heatmap per grid into ``out`` (created); returns the paths."""
    from attnlab.report.head_grids import write_head_grid

    csv_path = write_csv(out / "heads.csv", result.rows())
    n = f"{model_name}, {result.n_prompts} IOI prompts"
    grids = [
        ("patching.png", result.patching, f"{n}: patching hook_z (normalised)", "0 corrupted, 1 clean", True),
        ("attribution.png", result.attribution, f"{n}: direct logit attribution", "logit(IO) - logit(S)", True),
        ("path_patching_q.png", result.path_q, f"{n}: path patching into the name movers' q", "change / clean", True),
        ("attention_end_io.png", result.attention_io, f"{n}: attention last token -> IO", "weight", False),
        ("attention_end_s.png", result.attention_s1 + result.attention_s2, f"{n}: attention last token -> S1+S2",
         "weight", False),
        ("attention_s2_s1.png", result.attention_s2_s1, f"{n}: attention S2 -> S1", "weight", False),
    ]  # fmt: skip
    return [csv_path] + [
        write_head_grid(grid, out / name, title, label, div) for name, grid, title, label, div in grids
    ]


@circuits_app.command("ioi")
@guarded
def ioi(
    model: Annotated[str, typer.Argument(help="the model: smollm2")],
    n_prompts: Annotated[int, typer.Option(help="IOI prompts (even: half ABBA, half BABA)")] = 24,
    seed: Annotated[int, typer.Option(help="seed of the prompt set")] = 0,
    corruption: Annotated[str, typer.Option(help="abc (three new names) or s2_flip (S2 becomes the IO)")] = "abc",
    batch_size: Annotated[int, typer.Option(help="patched copies per forward pass")] = 16,
    prompt_batch: Annotated[int, typer.Option(help="prompts per forward pass (× batch-size sequences)")] = 8,
    top: Annotated[int, typer.Option(help="heads listed per ranking and per class")] = 4,
    out: Annotated[Path, typer.Option(help="folder for heads.csv and the heatmaps")] = Path("runs/circuits/ioi"),
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """IOI on a pretrained model: logit difference, top heads by patching and by attribution, the head classes."""
    if model not in MODELS:
        raise ConfigError("model", model, "no loader for this model", list(MODELS))
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1")

    from attnlab.experiments.ioi import CLASSES, check_settings, ioi_circuit, top_heads
    from attnlab.experiments.prompts.ioi import check_request, ioi_prompts
    from attnlab.lens.interventions import head_label

    check_request(n_prompts, corruption)  # every option is checked before the model loads
    check_settings(batch_size, prompt_batch, top)
    t0, lm, tokenizer = _load(model, threads, out)
    prompts = ioi_prompts(tokenizer, n_prompts, seed, corruption, **MODELS[model])
    result = ioi_circuit(lm, prompts, batch_size=batch_size, prompt_batch=prompt_batch, top=top)
    console.print(f"{model}: {n_prompts} IOI prompts (seed {seed}), corruption {corruption}, e.g. {prompts.texts[0]!r}")
    console.print(
        f"logit diff IO − S: clean {result.clean_diff:.3f}, corrupted {result.corrupted_diff:.3f}; "
        f"IO above S in {result.accuracy:.0%} of the clean prompts"
    )
    ranks = Table(title=f"Top {top} heads", title_justify="left")
    for col in ("rank", "patching z (normalised)", "attribution (logit diff)"):
        ranks.add_column(col, justify="right" if col == "rank" else "left")
    by_patch, by_attr = top_heads(result.patching, top), top_heads(result.attribution, top)
    for rank, (p, a) in enumerate(zip(by_patch, by_attr, strict=False), 1):
        ranks.add_row(
            str(rank),
            f"{head_label(p)} {float(result.patching[p]):+.3f}",
            f"{head_label(a)} {float(result.attribution[a]):+.3f}",
        )
    console.print(ranks)
    signature = {
        "name mover": ("attribution", "attention_io"),
        "negative name mover": ("attribution", "attention_io"),
        "S suppression": ("attribution", "attention_s2"),
        "S-inhibition": ("path_q", "attribution"),
        "duplicate-token": ("attention_s2_s1", "patching"),
    }
    labels = {
        "attribution": "attribution",
        "attention_io": "attention end→IO",
        "attention_s2": "attention end→S2",
        "path_q": "path patching via q, change / clean",
        "attention_s2_s1": "attention S2→S1",
        "patching": "patching",
    }
    classes = Table(title="Head classes found by their signatures", title_justify="left")
    for col in ("class", "heads (first signature)", "second signature"):
        classes.add_column(col)
    for name in CLASSES:
        first, second = signature[name]
        heads = result.classes[name]
        classes.add_row(
            name,
            f"{labels[first]}: {_heads(result, heads, first)}",
            f"{labels[second]}: {_heads(result, heads, second)}",
        )
    console.print(classes)
    written = write_ioi(result, out, model)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"wrote {len(written)} files to {out} ({', '.join(p.name for p in written)})")
    console.print(f"total {time.perf_counter() - t0:.0f} s ({stages})")


# ------------------------------------------------------------------------------------ recall and multiple choice
class Summary:
    """Tables printed to the console and collected, with the heatmaps, into ``summary.md``."""

    def __init__(self, title: str) -> None:
        from attnlab.report.document import Block

        self.title = title
        self.blocks: list[Block] = []

    def line(self, text: str) -> None:
        from attnlab.report.document import Paragraph

        console.print(text)
        self.blocks.append(Paragraph([text]))

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        from attnlab.report.document import Heading
        from attnlab.report.document import Table as Doc

        shown = Table(title=title, title_justify="left")
        for i, col in enumerate(columns):
            shown.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            shown.add_row(*row)
        console.print(shown)
        self.blocks += [Heading(2, title), Doc(columns, rows, numeric=set(range(1, len(columns))))]

    def write(self, out: Path, figures: list[tuple[str, str]]) -> Path:
        """``summary.md`` in ``out`` with the tables, then the figures (file name, caption) beside it."""
        from attnlab.report.document import Figure, Heading, render_markdown

        blocks = [*self.blocks, Heading(2, "Heatmaps"), *[Figure(name, b"", caption) for name, caption in figures]]
        path = out / "summary.md"
        path.write_text(render_markdown(self.title, blocks))
        return path


def _labels(heads: list) -> str:
    from attnlab.lens.interventions import head_label

    return " ".join(head_label(h) for h in heads) or "none"


def _ranked(grid: Any, heads: list) -> list[str]:
    from attnlab.lens.interventions import head_label

    return [f"{head_label(h)} {float(grid[h]):+.3f}" for h in heads]


def _start(model: str, threads: int | None) -> None:
    if model not in MODELS:
        raise ConfigError("model", model, "no loader for this model", list(MODELS))
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "must be at least 1")


def _known(lm: Any, tokenizer: Any, model: str, relations: list[str] | None, summary: Summary) -> list:
    """The facts of ``relations`` the model answers correctly without context, with a line that counts them."""
    from collections import Counter

    from attnlab.experiments.prompts.recall import candidate_facts
    from attnlab.experiments.recall import known_facts

    candidates = candidate_facts(tokenizer, relations)
    known = known_facts(lm, tokenizer, candidates, **MODELS[model])
    total, kept = Counter(f.relation for f in candidates), Counter(f.relation for f in known)
    per = ", ".join(f"{name} {kept[name]}/{total[name]}" for name in total)
    summary.line(f"{len(known)} of {len(candidates)} one-token facts answered correctly without context ({per})")
    if len(known) < 2:
        raise ConfigError("relations", ",".join(relations or []), f"{model} knows {len(known)} of their facts")
    return known


@circuits_app.command("recall")
@guarded
def recall(
    model: Annotated[str, typer.Argument(help="the model: smollm2")],
    relations: Annotated[str | None, typer.Option(help="comma-separated relations (default: all)")] = None,
    per_fact: Annotated[int, typer.Option(help="counterfactual prompts per fact")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the split and the counterfactuals")] = 0,
    top: Annotated[int, typer.Option(help="heads per set (memory, context) and random control")] = 5,
    scales: Annotated[str, typer.Option(help="coefficients for each head set (0 = ablate)")] = "0,2",
    patch_prompts: Annotated[
        int, typer.Option(help="selection prompts patched, the first ones (0: none; all when above their count)")
    ] = 16,
    batch_size: Annotated[int, typer.Option(help="patched copies per forward pass")] = 16,
    prompt_batch: Annotated[int, typer.Option(help="prompts per forward pass")] = 8,
    out: Annotated[Path, typer.Option(help="folder for summary.md, heads.csv and the heatmaps")] = Path(
        "runs/circuits/recall"
    ),
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """Counterfactual recall: memory vs context answer rates, the heads that move them, the rates after editing
    them (measured on held-out facts)."""
    _start(model, threads)

    from attnlab.cli.options import float_list
    from attnlab.experiments.prompts.recall import RELATIONS, recall_prompts, split_facts
    from attnlab.experiments.recall import check_settings, edit_rates, head_edits, recall_circuit
    from attnlab.lens.interventions import random_heads
    from attnlab.report.head_grids import write_head_grid

    chosen = None if relations is None else [r for r in relations.replace(" ", ",").split(",") if r]
    for name in chosen or []:
        if name not in RELATIONS:
            raise ConfigError("relations", name, "not a relation of the recall set", list(RELATIONS))
    if per_fact < 1:
        raise ConfigError("per_fact", per_fact, "must be at least 1")
    check_settings(batch_size, prompt_batch, top, patch_prompts)
    coefs = float_list("scales", scales)
    t0, lm, tokenizer = _load(model, threads, out)
    summary = Summary(f"attnlab circuits recall {model}")
    known = _known(lm, tokenizer, model, chosen, summary)
    selection, held_out = split_facts(known, seed)
    prompts = recall_prompts(tokenizer, selection, seed, per_fact, **MODELS[model])
    test = recall_prompts(tokenizer, held_out, seed + 1, per_fact, **MODELS[model])
    summary.line(
        f"{len(prompts)} selection prompts, {len(test)} held-out prompts (other facts), e.g. {prompts.texts[0]!r}"
    )
    result = recall_circuit(lm, prompts, batch_size, prompt_batch, patch_prompts)
    rate_cols = ["prompts", "top-1 memory", "top-1 context", "neither", "logit diff memory − context"]
    summary.table(
        "Selection prompts",
        rate_cols,
        [[label, f"{r.memory:.3f}", f"{r.context:.3f}", f"{r.other:.3f}", f"{r.logit_diff:+.3f}"]
         for label, r in (("query alone", result.bare), ("with counterfactual context", result.context))],
    )  # fmt: skip
    memory_heads, context_heads = result.heads(top)
    columns = [_ranked(result.attribution, memory_heads), _ranked(result.attribution, context_heads)]
    columns.append(_ranked(result.patching, result.restoring(top)))
    summary.table(
        f"Top {top} heads (attribution: logit diff memory − context, with context; patching: {result.n_patched} "
        "prompts, the last position from the query alone, 0 = with context, 1 = query alone)",
        ["rank", "memory heads (attribution)", "context heads (attribution)", "patching, towards memory"],
        [[str(i + 1), *[c[i] if i < len(c) else "" for c in columns]] for i in range(top)],
    )
    control = random_heads(lm, top, seed, exclude=memory_heads + context_heads)
    edits = head_edits({"context": context_heads, "memory": memory_heads}, coefs, control)
    summary.line(f"edited: memory heads {_labels(memory_heads)}; context heads {_labels(context_heads)}; "
                 f"random control {_labels(control)}")  # fmt: skip
    t1 = time.perf_counter()
    rows = edit_rates(lm, test, edits, prompt_batch)
    summary.table(
        f"Held-out prompts ({len(test)}), with the heads edited",
        ["edit", "top-1 memory", "top-1 context", "neither", "logit diff", "query alone: top-1 memory"],
        [[e.label, f"{r.memory:.3f}", f"{r.context:.3f}", f"{r.other:.3f}", f"{r.logit_diff:+.3f}",
          f"{b.memory:.3f}"] for e, r, b in rows],
    )  # fmt: skip
    result.seconds["edits"] = time.perf_counter() - t1
    csv_path = write_csv(out / "heads.csv", head_rows(attribution=result.attribution, patching=result.patching))
    figures = [
        ("attribution.png", result.attribution, "direct logit attribution, memory − context", "logit diff"),
        ("patching.png", result.patching, "patching hook_z at the last position", "0 context, 1 query alone"),
    ]
    for name, grid, title, label in figures:
        write_head_grid(grid, out / name, f"{model}, {len(prompts)} recall prompts: {title}", label)
    md = summary.write(out, [(name, title) for name, _, title, _ in figures])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"wrote {md.name}, {csv_path.name}, {', '.join(f[0] for f in figures)} to {out}")
    console.print(f"total {time.perf_counter() - t0:.0f} s ({stages})")


@circuits_app.command("mcq")
@guarded
def mcq(
    model: Annotated[str, typer.Argument(help="the model: smollm2")],
    n_arithmetic: Annotated[int, typer.Option(help="one-digit additions added to the fact questions")] = 16,
    seed: Annotated[int, typer.Option(help="seed of the questions, distractors and split")] = 0,
    top: Annotated[int, typer.Option(help="bias heads recalibrated (and random control heads)")] = 5,
    scales: Annotated[str, typer.Option(help="coefficients for the bias heads (0 = ablate)")] = "0,0.5",
    prompt_batch: Annotated[int, typer.Option(help="prompts per forward pass")] = 16,
    out: Annotated[Path, typer.Option(help="folder for summary.md, heads.csv and the heatmaps")] = Path(
        "runs/circuits/mcq"
    ),
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """Multiple choice with the answer moved across A–D: accuracy by position, the letters' logit lens, the bias
    heads and the bias after recalibrating them (measured on held-out questions)."""
    _start(model, threads)

    from attnlab.cli.options import float_list
    from attnlab.experiments.ioi import top_heads
    from attnlab.experiments.mcq import edit_scores, mcq_circuit
    from attnlab.experiments.prompts.mcq import (
        LETTERS,
        arithmetic_questions,
        fact_questions,
        mcq_prompts,
        split_questions,
    )
    from attnlab.experiments.recall import check_settings, head_edits
    from attnlab.lens.interventions import random_heads
    from attnlab.report.head_grids import write_head_grid

    arithmetic_questions(n_arithmetic, seed)  # checks the count before the model loads
    check_settings(1, prompt_batch, top)
    coefs = float_list("scales", scales)
    t0, lm, tokenizer = _load(model, threads, out)
    summary = Summary(f"attnlab circuits mcq {model}")
    known = _known(lm, tokenizer, model, None, summary)
    questions = fact_questions(known, seed) + arithmetic_questions(n_arithmetic, seed)
    selection, held_out = split_questions(questions, seed)
    prompts = mcq_prompts(tokenizer, selection, **MODELS[model])
    test = mcq_prompts(tokenizer, held_out, **MODELS[model])
    summary.line(
        f"{len(questions)} questions ({len(questions) - n_arithmetic} from known facts, {n_arithmetic} additions), "
        f"each in 4 rotations: {len(selection)} for selection, {len(held_out)} held out"
    )
    result = mcq_circuit(lm, prompts, prompt_batch)
    s = result.scores

    def score_row(label: str, sc: Any) -> list[str]:
        return [label, *[f"{float(a):.3f}" for a in sc.accuracy], f"{sc.overall:.3f}",
                *[f"{float(c):.3f}" for c in sc.choices]]  # fmt: skip

    score_cols = ["", *[f"acc @{x}" for x in LETTERS], "acc", *[f"chose {x}" for x in LETTERS]]
    summary.table(f"Selection questions ({s.n} prompts): accuracy by the answer's position", score_cols,
                  [score_row("unedited", s)])  # fmt: skip
    summary.table(
        f"Logit lens at the answer position: mean logit of each letter (anchor {LETTERS[s.anchor]})",
        ["before layer", *LETTERS],
        [[str(layer) if layer < len(result.lens) - 1 else "final", *[f"{float(v):.2f}" for v in row]]
         for layer, row in enumerate(result.lens)],
    )  # fmt: skip
    bias_heads = result.bias_heads(top)
    correct_heads = top_heads(result.correct, top)
    columns = [_ranked(result.bias, bias_heads), _ranked(result.correct, correct_heads)]
    summary.table(
        f"Top {top} heads (attribution at the answer position)",
        ["rank", f"bias: {LETTERS[s.anchor]} − correct", "correct letter − others"],
        [[str(i + 1), *[c[i] if i < len(c) else "" for c in columns]] for i in range(top)],
    )
    control = random_heads(lm, len(bias_heads), seed, exclude=bias_heads)
    t1 = time.perf_counter()
    rows = edit_scores(lm, test, head_edits({"bias": bias_heads}, coefs, control), prompt_batch)
    summary.table(f"Held-out questions ({len(test)} prompts), bias heads recalibrated", score_cols,
                  [score_row(e.label, sc) for e, sc in rows])  # fmt: skip
    result.seconds["edits"] = time.perf_counter() - t1
    csv_path = write_csv(out / "heads.csv", head_rows(bias=result.bias, correct_letter=result.correct))
    figures = [
        ("bias.png", result.bias, f"attribution {LETTERS[s.anchor]} − correct", "logit diff"),
        ("correct_letter.png", result.correct, "attribution correct − other letters", "logit diff"),
    ]
    for name, grid, title, label in figures:
        write_head_grid(grid, out / name, f"{model}, {s.n} MCQ prompts: {title}", label)
    md = summary.write(out, [(name, title) for name, _, title, _ in figures])
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"wrote {md.name}, {csv_path.name}, {', '.join(f[0] for f in figures)} to {out}")
    console.print(f"total {time.perf_counter() - t0:.0f} s ({stages})")
