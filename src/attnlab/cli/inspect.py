"""``attnlab inspect``: score every attention head of a pretrained model, a local checkpoint or a trained run.

Three kinds of target, tried in this order: a model the lens ships a loader for (``lens.inspect.MODELS``), the
run id of a results database, a transformers checkpoint folder. The input is one of ``--text``, ``--file`` or
the synthetic induction task (``[BOS] + x + x``, the default); a run is always inspected on its own task's data.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from attnlab.cli.console import console
from attnlab.cli.guard import guarded
from attnlab.cli.options import output_folder
from attnlab.errors import ConfigError

inspect_app = typer.Typer(add_completion=False)

RUN_DBS = (Path("runs/results.sqlite"), Path("runs/demo.sqlite"), Path("runs/standard.sqlite"))
INPUT_OPTIONS = ("--text", "--file", "--task")


def find_run(name: str, db: Path | None) -> Path | None:
    """The results database holding run id ``name`` (``db`` if given, else the default ones), or None.

    Read-only: no database file is created, and a file that is not a results database holds no run.
    """
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


def _one_input(text: str | None, file: Path | None, task: str | None) -> None:
    chosen = [opt for opt, v in zip(INPUT_OPTIONS, (text, file, task), strict=True) if v is not None]
    if len(chosen) > 1:
        raise ConfigError("input", " ".join(chosen), "give only one of --text, --file, --task")


def _text_tokens(tokenizer: Any, text: str | None, file: Path | None) -> tuple[Any, list[str]]:
    """``--text`` or ``--file`` through a ``tokenizers.Tokenizer`` → (tokens [1, T], token strings)."""
    import torch

    if file is not None:
        if not file.is_file():
            raise ConfigError("file", str(file), "no such file")
        text = file.read_text()
    enc = tokenizer.encode(text)
    if len(enc.ids) < 3:
        raise ConfigError("text", text, "needs at least 3 tokens")
    return torch.tensor([enc.ids]), list(enc.tokens)


def _induction_tokens(task: str | None, n: int, seed: int, low: int, high: int, bos: int) -> Any:
    """The induction task's ``[BOS] + x + x`` with |x| = n → tokens [1, 2n + 1]."""
    from attnlab.lens.inspect import induction_tokens

    if task not in (None, "induction"):
        raise ConfigError("task", task, "unknown task", allowed=["induction"])
    if n < 1:
        raise ConfigError("seq_len", n, "must be at least 1")
    return induction_tokens(n, seed, low, high, bos)


def _model_inputs(name: str, tokenizer: Any, text: str | None, file: Path | None, task: str | None, n: int, seed: int):
    """A shipped model's input → (tokens [1, T], seq_half or None, labels or None)."""
    from attnlab.lens.inspect import MODEL_INFO

    if text is None and file is None:
        info = MODEL_INFO[name]
        return _induction_tokens(task, n, seed, info["low"], info["high"], info["bos"]), n, None
    tokens, labels = _text_tokens(tokenizer, text, file)
    return tokens, None, labels


def _run_inputs(name: str, db: Path, text: str | None, file: Path | None, task: str | None, step: int | None = None):
    """A trained run as an inspect target → (model, causal, tokens [1, T], seq_half or None, labels None).

    The tokens are the first example of the run's own evaluation set; for the induction task the head table
    gets the induction score over its two copies.
    """
    from attnlab.runner.checkpoint_model import load_run

    for option, value in zip(INPUT_OPTIONS, (text, file, task), strict=True):
        if value is not None:
            raise ConfigError(option.lstrip("-"), str(value), "a run is inspected on its own task's evaluation data")
    model, cfg = load_run(db, name, step)
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
    if step is not None:
        _stored_step_metrics(model, cfg, db, name, step)
    return model, cfg.model.causal, tokens, seq_half, None


def _stored_step_metrics(model: Any, cfg: Any, db: Path, name: str, step: int) -> None:
    """Print the run's evaluation at ``step`` as stored during training next to the same evaluation of the kept
    weights: they agree, or the weights are not those of that step."""
    from attnlab.runner.store import Store
    from attnlab.train.loop import evaluate

    with Store(db) as store:
        stored = {n[len("eval_") :]: v for s, n, v in store.curves(name) if s == step and n.startswith("eval_")}
    again = evaluate(model, cfg.task.build(cfg.seed).eval_batch(cfg.train.eval_examples), cfg.train)
    model.eval()
    for metric in ("loss", "accuracy"):
        console.print(f"step {step} {metric}: stored {stored.get(metric, float('nan')):.6f}, now {again[metric]:.6f}")


def _checkpoint_pass(folder: Path, text: str | None, file: Path | None, task: str | None, n: int, seed: int):
    """A local transformers checkpoint folder, through transformers' eager attention (the ``hf`` extra)
    → (logits, patterns, tokens, causal, seq_half, labels)."""
    from attnlab.lens.capture import patterns
    from attnlab.lens.pretrained.hf_adapter import checkpoint_kind, hf_run_with_cache, load_hf

    model = load_hf(folder)
    causal = checkpoint_kind(folder) == "causal_lm"
    labels, seq_half = None, None
    if text is not None or file is not None:
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ConfigError("text", str(folder), "the checkpoint has no tokenizer.json; use --task induction")
        from tokenizers import Tokenizer

        tokens, labels = _text_tokens(Tokenizer.from_file(str(tokenizer_file)), text, file)
    else:
        vocab = int(model.config.vocab_size)  # position 0 holds token 0, as [BOS] in the induction convention
        tokens, seq_half = _induction_tokens(task, n, seed, min(100, vocab // 2), vocab, 0), n
    logits, cache = hf_run_with_cache(model, tokens)
    return logits, patterns(cache), tokens, causal, seq_half, labels


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
    step: int | None = None,
) -> None:
    from attnlab.lens import inspect as lens

    output_folder("out", out)
    _one_input(text, file, task)
    if step is not None and find_run(name, db) is None:
        raise ConfigError("step", step, f"applies to a run id of a results database, not {name!r}")
    if name in lens.MODELS:
        try:
            model, tokenizer = lens.load_model(name)
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError("model", name, f"cannot load: {err}") from err
        causal = lens.MODEL_INFO[name]["causal"]
        tokens, seq_half, labels = _model_inputs(name, tokenizer, text, file, task, n, seed)
        logits, pats = lens.capture_patterns(model, tokens)
    elif (run_db := find_run(name, db)) is not None:
        model, causal, tokens, seq_half, labels = _run_inputs(name, run_db, text, file, task, step)
        logits, pats = lens.capture_patterns(model, tokens)
    elif Path(name).is_dir():
        logits, pats, tokens, causal, seq_half, labels = _checkpoint_pass(Path(name), text, file, task, n, seed)
    else:
        where = str(db) if db is not None else "runs/*.sqlite"
        raise ConfigError("model", name, f"not a model, checkpoint folder or run id of {where}", lens.MODELS)
    _report_heads(name, logits, pats, tokens, causal, seq_half, labels, seed, top, out)


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


@inspect_app.command()
@guarded
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
    step: Annotated[
        int | None, typer.Option(help="a run's weights at this step of its training (train.checkpoint_every)")
    ] = None,
) -> None:
    """Score every attention head of a pretrained model or a trained run (induction, sinks, ...) and its loss."""
    _inspect(model, text, file, task, seq_len, seed, top, out, db, step)
