"""``attnlab circuits``: find a task's circuit in a pretrained model with the lens (``attnlab circuits ioi smollm2``).

The logic lives in ``attnlab.experiments.ioi`` (measurements and head classes) and
``attnlab.experiments.prompts.ioi`` (the prompt set); this module checks the options, loads the model, prints the
tables and writes the CSV and heatmaps. Bad input exits with status 2 and one line
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


def write_ioi(result: Any, out: Path, model_name: str) -> list[Path]:
    """``heads.csv`` (``IOIResult.rows``) and one heatmap per grid into ``out`` (created); returns the paths."""
    from attnlab.report.head_grids import write_head_grid

    out.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    csv_path = out / "heads.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
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
    import torch

    from attnlab.experiments.ioi import CLASSES, check_settings, ioi_circuit, top_heads
    from attnlab.experiments.prompts.ioi import check_request, ioi_prompts
    from attnlab.lens.interventions import head_label

    check_request(n_prompts, corruption)  # every option is checked before the model loads
    check_settings(batch_size, prompt_batch, top)
    output_folder("out", out)

    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    lm, tokenizer = load_model(model)
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
