"""The ``attnlab`` command line: ``zoo``, ``run``, ``demo``, ``leaderboard``, ``inspect``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnlab.errors import ConfigError
from attnlab.report.tables import md_cell

app = typer.Typer(add_completion=False, no_args_is_help=True, help="attnlab: a laboratory for attention mechanisms.")
console = Console(width=None if sys.stdout.isatty() else 140)


def _mount_subcommands() -> None:
    """Sub-apps live beside their code; they import nothing heavy at module level."""
    from attnlab.data.cli import data_app
    from attnlab.lens.intervene_cli import intervene_app
    from attnlab.speed_cli import speed_app

    app.add_typer(data_app, name="data", help="Build and list the real-text corpora (attnlab data build NAME).")
    from attnlab.lens.experiments_cli import experiments_app

    # One group for every measured change: head edits (ablate, scale, pear, act) and the cache / position ones.
    intervene_app.registered_commands.extend(experiments_app.registered_commands)
    app.add_typer(
        intervene_app,
        name="intervene",
        help="Change a model and measure before / after: ablate, scale, pear, act, kv-eviction, rope-scaling, sinks.",
    )

    app.add_typer(
        speed_app,
        name="speed",
        help="Time and peak memory of every mechanism × backend against SDPA, the reference and x-transformers.",
    )


_mount_subcommands()

BACKENDS = ["local", "ray"]
CAPABILITY_COLUMNS = ("causal", "non_causal", "cross", "kv_cache", "row_stochastic", "signed")


def _mark(value: bool) -> str:
    return "[green]yes[/green]" if value else "[dim]-[/dim]"


def zoo_markdown() -> str:
    """The compatibility table of every registry entry, as markdown (the README's table is this output)."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS
    from attnlab.position import POSITIONS

    header = ["axis", "name", *(c.replace("_", "-") for c in CAPABILITY_COLUMNS), "backends", "summary", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for axis, registry in (("normaliser", NORMALISERS), ("heads", HEADS), ("position", POSITIONS)):
        for e in registry.entries():
            caps = e.capabilities
            marks = ["✓" if getattr(caps, c) else "–" for c in CAPABILITY_COLUMNS]
            cells = [axis, f"`{e.name}`", *marks, ", ".join(caps.backends), e.summary, e.paper]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    lines += ["", "Feature maps φ of the kernel-attention normalisers:", "", "| feature map | summary | paper |"]
    lines.append("|---|---|---|")
    lines += [f"| `{e.name}` | {md_cell(e.summary)} | {md_cell(e.paper)} |" for e in FEATURE_MAPS.entries()]
    return "\n".join(lines)


@app.command()
def zoo(markdown: Annotated[bool, typer.Option(help="print a markdown table instead")] = False) -> None:
    """List every registered mechanism and position encoding with its capabilities."""
    from attnlab.attention import HEADS, NORMALISERS
    from attnlab.position import POSITIONS

    if markdown:
        print(zoo_markdown())
        return
    for title, registry in (("normalisers", NORMALISERS), ("heads", HEADS), ("positions", POSITIONS)):
        table = Table(title=f"{title} ({len(registry)})", title_justify="left")
        table.add_column("name", style="bold")
        for col in CAPABILITY_COLUMNS:
            table.add_column(col.replace("_", "-"))
        table.add_column("backends")
        table.add_column("paper")
        for e in registry.entries():
            caps = e.capabilities
            table.add_row(
                e.name,
                *(_mark(getattr(caps, c)) for c in CAPABILITY_COLUMNS),
                ", ".join(caps.backends),
                e.paper,
            )
        console.print(table)
    from attnlab.attention.linear.feature_maps import FEATURE_MAPS

    table = Table(title=f"feature maps ({len(FEATURE_MAPS)})", title_justify="left")
    for col in ("name", "summary", "paper"):
        table.add_column(col)
    for e in FEATURE_MAPS.entries():
        table.add_row(e.name, e.summary, e.paper)
    console.print(table)
    total = sum(len(r) for r in (NORMALISERS, HEADS, POSITIONS, FEATURE_MAPS))
    console.print(f"{total} entries; docs: docs/zoo/README.md, compatibility: docs/compatibility.md")


def _run(
    sweep_name: str,
    db: Path,
    workers: int | None,
    threads: int | None,
    report_dir: Path | None,
    backend: str = "local",
    address: str | None = None,
) -> None:
    from attnlab.report.markdown import write_report
    from attnlab.runner.local import plan_workers, run_local
    from attnlab.runner.store import Store
    from attnlab.sweeps import load_sweep

    if backend not in BACKENDS:
        raise ConfigError("backend", backend, "unknown backend", BACKENDS)
    if address is not None and backend != "ray":
        raise ConfigError("address", address, "is for the Ray backend only", ["--backend ray"])
    sweep = load_sweep(sweep_name)
    runs = sweep.runs()
    for line in sweep.skipped():
        console.print(f"[dim]skipped: {line}[/dim]")
    with Store(db) as store:
        store.enqueue(runs)
        todo = sum(store.status(r.run_id) != "done" for r in runs)
        n_workers, n_threads = plan_workers(max(todo, 1), workers, threads)
        console.print(
            f"sweep [bold]{sweep.name}[/bold]: {len(runs)} runs, {len(runs) - todo} already done; "
            f"{n_workers if workers != 0 else 'in-process'} worker(s) × {n_threads} thread(s); database {db}"
        )
        t0 = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{sweep.name}", total=len(runs), completed=len(runs) - todo)

            def on_done(run, outcome) -> None:
                acc = outcome.final.get("accuracy")
                result = f"accuracy {acc:.3f}" if outcome.ok else f"[red]failed[/red]: {outcome.error.splitlines()[0]}"
                progress.console.print(
                    f"  {run.task.name} {run.mechanism} / {run.position} d{run.model.d_model} lr {run.train.lr:g} "
                    f"seed {run.seed}: {result} ({outcome.wall_s:.0f} s)"
                )
                progress.advance(bar)

            if backend == "ray":
                from attnlab.runner.ray_backend import run_ray

                summary = run_ray(runs, store, address=address, workers=workers, threads=n_threads, on_done=on_done)
            else:
                summary = run_local(runs, store, workers=workers, threads=n_threads, on_done=on_done)
        console.print(
            f"finished in {time.perf_counter() - t0:.0f} s: {summary.done} done, {summary.failed} failed, "
            f"{summary.skipped} skipped (already done)"
        )
        _print_leaderboard(store, sweep.name)
        if report_dir is not None:
            path = write_report(store, report_dir, sweep=sweep.name, title=f"attnlab sweep {sweep.name}")
            console.print(f"report: {path}")


def _print_leaderboard(store, sweep: str | None) -> None:
    from rich.markup import escape

    from attnlab.report.tables import COLUMNS, entry_cells, leaderboard

    entries = leaderboard(store.runs(sweep=sweep))
    table = Table(title="leaderboard (best over learning rates, mean over seeds)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("task", "mechanism", "position") else "left")
    for e in entries:  # escaped: task labels like lm[length=128 tokenizer=byte] are not rich markup
        table.add_row(*(escape(cell) for cell in entry_cells(e)))
    console.print(table)


@app.command()
def run(
    sweep: Annotated[str, typer.Argument(help="a preset name (see `attnlab presets`) or a Python file defining SWEEP")],
    db: Annotated[Path, typer.Option(help="results database (SQLite)")] = Path("runs/results.sqlite"),
    workers: Annotated[int | None, typer.Option(help="parallel runs; 0 runs in this process")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    report: Annotated[Path | None, typer.Option(help="write the HTML + markdown report with plots here")] = None,
    backend: Annotated[str, typer.Option(help="local (a process pool) or ray")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (auto, ray://host:port)")] = None,
) -> None:
    """Run a sweep; finished runs in the database are skipped, unfinished ones re-run."""
    _guard(lambda: _run(sweep, db, workers, threads, report, backend, address))


@app.command()
def demo(
    db: Annotated[Path, typer.Option(help="results database")] = Path("runs/demo.sqlite"),
    report: Annotated[Path, typer.Option(help="report folder")] = Path("runs/demo"),
) -> None:
    """The quick sweep: six attention mechanisms on MQAR, a leaderboard and a report (a few minutes, 2 cores)."""
    _guard(lambda: _run("quick", db, None, None, report))


@app.command()
def leaderboard(db: Annotated[Path, typer.Argument(help="results database")], sweep: str | None = None) -> None:
    """Print the leaderboard of a results database."""
    from attnlab.runner.store import Store

    if not db.is_file():
        _fail(ConfigError("db", str(db), "no such file"))
    with Store(db) as store:
        _print_leaderboard(store, sweep)


@app.command()
def report(
    db: Annotated[Path, typer.Argument(help="results database")],
    out: Annotated[Path | None, typer.Option(help="report folder (default: next to the database)")] = None,
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = None,
) -> None:
    """Write report.html (self-contained) and report.md with leaderboards and plots for a results database."""

    def go() -> None:
        from attnlab.report.markdown import write_report
        from attnlab.runner.store import Store

        if not db.is_file():
            raise ConfigError("db", str(db), "no such file")
        folder = out if out is not None else db.with_suffix("")
        with Store(db) as store:
            path = write_report(store, folder, sweep=sweep, title=f"attnlab report: {db.name}")
        console.print(f"report: {path} and {path.with_suffix('.html')}")

    _guard(go)


@app.command()
def export(
    db: Annotated[Path, typer.Argument(help="results database")],
    path: Annotated[Path, typer.Argument(help="output file: .csv or .parquet")],
    sweep: Annotated[str | None, typer.Option(help="only this sweep's runs")] = None,
) -> None:
    """Export one row per run (config axes, status, wall time, every final metric) to CSV or Parquet."""

    def go() -> None:
        from attnlab.report.export import export as export_runs
        from attnlab.runner.store import Store

        if not db.is_file():
            raise ConfigError("db", str(db), "no such file")
        with Store(db) as store:
            n = export_runs(store, path, sweep=sweep)
        console.print(f"wrote {n} runs to {path}")

    _guard(go)


@app.command()
def docs(out: Annotated[Path, typer.Option(help="docs folder")] = Path("docs")) -> None:
    """Write one page and one picture per registry entry, and the compatibility matrix."""
    from attnlab.report.zoo_docs import write_docs

    written = write_docs(out)
    console.print(f"wrote {len(written)} files under {out}/")


@app.command()
def presets() -> None:
    """List the sweep presets."""
    from attnlab.sweeps import load_sweep, preset_names

    for name in preset_names():
        s = load_sweep(name)
        console.print(f"{name}: {len(s.runs())} runs — tasks {[t.name for t in s.tasks]}")


RUN_DBS = (Path("runs/results.sqlite"), Path("runs/demo.sqlite"), Path("runs/standard.sqlite"))


def _find_run(name: str, db: Path | None) -> Path | None:
    """The results database holding run id ``name`` (``db`` if given, else the default ones), or None.

    Read-only: no database file is created.
    """
    import sqlite3

    for path in [db] if db is not None else RUN_DBS:
        if path is None or not path.is_file():
            continue
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (name,)).fetchone():
                    return path
        except sqlite3.Error:
            continue
    return None


def _inspect_tokens(name: str, tokenizer, text: str | None, file: Path | None, task: str | None, n: int, seed: int):
    """→ (tokens [1, T], seq_half or None, labels or None)."""
    from attnlab.lens.inspect import MODEL_INFO, induction_tokens

    chosen = [opt for opt, v in (("--text", text), ("--file", file), ("--task", task)) if v is not None]
    if len(chosen) > 1:
        raise ConfigError("input", " ".join(chosen), "give only one of --text, --file, --task")
    if text is None and file is None:
        if task not in (None, "induction"):
            raise ConfigError("task", task, "unknown task", allowed=["induction"])
        if n < 1:
            raise ConfigError("seq_len", n, "must be at least 1")
        info = MODEL_INFO[name]
        return induction_tokens(n, seed, info["low"], info["high"], info["bos"]), n, None
    if file is not None:
        if not file.is_file():
            raise ConfigError("file", str(file), "no such file")
        text = file.read_text()
    enc = tokenizer.encode(text)
    if len(enc.ids) < 3:
        raise ConfigError("text", text, "needs at least 3 tokens")
    import torch

    return torch.tensor([enc.ids]), None, list(enc.tokens)


def _run_inputs(name: str, db: Path, text: str | None, file: Path | None, task: str | None):
    """A trained run as an inspect target → (model, causal, tokens [1, T], seq_half or None, labels None).

    The tokens are the first example of the run's own evaluation set; for the induction task the head table
    gets the induction score over its two copies.
    """
    from attnlab.lens.inspect import load_run

    for option, value in (("--text", text), ("--file", file), ("--task", task)):
        if value is not None:
            raise ConfigError(option.lstrip("-"), str(value), "a run is inspected on its own task's evaluation data")
    model, cfg = load_run(db, name)
    if cfg.model.mode == "encoder_decoder":
        raise ConfigError("model", name, "is an encoder-decoder run; inspect reads decoder-only or encoder models")
    built = cfg.task.build(cfg.seed)
    tokens = built.eval_batch(1).inputs
    seq_half = None
    if cfg.task.name == "induction" and getattr(cfg.task, "bos", False):
        seq_half = cfg.task.half
    console.print(
        f"run {name} ({db}): {cfg.task.name} · {cfg.mechanism} / {cfg.position} · d{cfg.model.d_model} "
        f"· {cfg.model.n_layers} layers; first evaluation example, {tokens.shape[1]} tokens"
    )
    return model, cfg.model.causal, tokens, seq_half, None


def _inspect(
    name: str,
    text: str | None,
    file: Path | None,
    task: str | None,
    n: int,
    seed: int,
    top: int,
    out: Path | None,
    db: Path | None = None,
) -> None:
    from attnlab.lens import inspect as lens

    if name in lens.MODELS:
        try:
            model, tokenizer = lens.load_model(name)
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError("model", name, f"cannot load: {err}") from err
        causal = lens.MODEL_INFO[name]["causal"]
        tokens, seq_half, labels = _inspect_tokens(name, tokenizer, text, file, task, n, seed)
    elif (run_db := _find_run(name, db)) is not None:
        model, causal, tokens, seq_half, labels = _run_inputs(name, run_db, text, file, task)
    elif Path(name).is_dir():
        _inspect_checkpoint(Path(name), text, file, task, n, seed, top, out)
        return
    else:
        where = str(db) if db is not None else "runs/*.sqlite"
        raise ConfigError("model", name, f"not a model, checkpoint folder or run id of {where}", lens.MODELS)
    logits, pats = lens.capture_patterns(model, tokens)
    _report_heads(name, logits, pats, tokens, causal, seq_half, labels, seed, top, out)


def _inspect_checkpoint(
    folder: Path, text: str | None, file: Path | None, task: str | None, n: int, seed: int, top: int, out: Path | None
) -> None:
    """A local transformers checkpoint directory, through transformers' eager attention (the ``hf`` extra)."""
    from attnlab.lens.capture import patterns
    from attnlab.lens.inspect import induction_tokens
    from attnlab.lens.pretrained.hf_adapter import checkpoint_kind, hf_run_with_cache, load_hf

    model = load_hf(folder)
    causal = checkpoint_kind(folder) == "causal_lm"
    labels, seq_half = None, None
    if text is not None or file is not None:
        if text is not None and file is not None:
            raise ConfigError("input", "--text --file", "give only one of --text, --file, --task")
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ConfigError("text", str(folder), "the checkpoint has no tokenizer.json; use --task induction")
        from tokenizers import Tokenizer

        if file is not None and not file.is_file():
            raise ConfigError("file", str(file), "no such file")
        enc = Tokenizer.from_file(str(tokenizer_file)).encode(text if text is not None else file.read_text())
        if len(enc.ids) < 3:
            raise ConfigError("text", text, "needs at least 3 tokens")
        import torch

        tokens, labels = torch.tensor([enc.ids]), list(enc.tokens)
    else:
        if task not in (None, "induction"):
            raise ConfigError("task", task, "unknown task", allowed=["induction"])
        vocab = int(model.config.vocab_size)  # position 0 holds token 0, as [BOS] in the induction convention
        tokens, seq_half = induction_tokens(n, seed, min(100, vocab // 2), vocab, 0), n
    logits, cache = hf_run_with_cache(model, tokens)
    _report_heads(str(folder), logits, patterns(cache), tokens, causal, seq_half, labels, seed, top, out)


def _report_heads(name, logits, pats, tokens, causal, seq_half, labels, seed, top, out) -> None:
    """Print the head table (and losses) of a captured pass; write CSV and heatmaps with ``out``."""
    from attnlab.lens import inspect as lens

    rows, losses = lens.analyse(logits, pats, tokens, causal, seq_half)
    key = "induction" if seq_half is not None else "sink_score"
    ranked = lens.sorted_rows(rows, key)
    shown = ranked[: max(top, 0)]
    what = f"induction task: [BOS] + x + x, |x| = {seq_half}, seed {seed}" if seq_half else f"{tokens.shape[1]} tokens"
    table = Table(title=f"{name}: top {len(shown)} of {len(rows)} heads by {key} ({what})", title_justify="left")
    wanted = (key, "sink_score", "induction", "previous_token", "duplicate", "entropy", "distance")
    columns = list(dict.fromkeys(c for c in wanted if c in rows[0]))
    for col in ("layer", "head", *columns):
        table.add_column(col, justify="right")
    for r in shown:
        table.add_row(str(r["layer"]), str(r["head"]), *(lens.fmt(r[c]) for c in columns))
    console.print(table)
    if not causal:
        console.print(f"loss: not defined for {name}, an encoder (no next-token prediction)")
    elif seq_half is not None:
        first, second = losses["first_copy"], losses["second_copy"]
        console.print(f"loss (nats/token): first copy {first:.3f}, second copy {second:.3f}")
    else:
        console.print(f"loss (nats/token): mean next-token {losses['mean']:.3f}")
    if out is not None:
        csv_path = lens.write_csv(ranked, out / "heads.csv")
        pngs = lens.write_heatmaps(shown, pats, out / "heatmaps", key, labels)
        console.print(f"wrote {csv_path} and {len(pngs)} heatmaps under {out / 'heatmaps'}/")


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="smollm2, minilm, or a run id of a results database")],
    text: Annotated[str | None, typer.Option(help="inspect the heads on this text")] = None,
    file: Annotated[Path | None, typer.Option(help="inspect the heads on this file's text")] = None,
    task: Annotated[str | None, typer.Option(help="a synthetic task: induction (the default)")] = None,
    seq_len: Annotated[int, typer.Option(help="induction: length of the random sequence x")] = 40,
    seed: Annotated[int, typer.Option(help="induction: seed of the random sequence")] = 0,
    top: Annotated[int, typer.Option(help="rows of the head table to print (and heatmaps to write)")] = 10,
    out: Annotated[Path | None, typer.Option(help="write the full table (CSV) and top heads' heatmaps here")] = None,
    db: Annotated[Path | None, typer.Option(help="the results database of a run id (default: runs/*.sqlite)")] = None,
) -> None:
    """Score every attention head of a pretrained model or a trained run (induction, sinks, ...) and its loss."""
    _guard(lambda: _inspect(model, text, file, task, seq_len, seed, top, out, db))


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


def _guard(fn) -> None:
    try:
        fn()
    except ConfigError as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: unfinished runs stay queued; run the same command to resume")
        raise typer.Exit(130) from None


if __name__ == "__main__":
    app()
