"""``attnlab intervene ablate|scale|pear|lofit|act|pine``: the typer sub-application for the experiments in
``attnlab.experiments`` (ablation, scaling, PEAR, LoFiT, ACT, and position bias: PINE, CCA, Uni-Encoder).

The main CLI mounts it with ``app.add_typer(intervene_app, name="intervene")``. Every command loads the model with
``lens.inspect.load_model`` (only SmolLM2 for now: the tasks need a causal LM), runs one experiment and prints its
table. Bad input is one line (``ConfigError``) and exit code 2.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from attnlab.cli.console import console
from attnlab.cli.guard import guard as _guard
from attnlab.cli.options import float_list
from attnlab.errors import ConfigError

intervene_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Intervene on attention heads of a pretrained model: ablate, scale, PEAR, LoFiT, ACT; before / after tables.",
)

CAUSAL_MODELS = ("smollm2",)


def _check_model(name: str) -> None:
    if name not in CAUSAL_MODELS:
        raise ConfigError("model", name, "intervene needs a causal language model", CAUSAL_MODELS)


def _load(name: str) -> tuple[Any, Any]:
    from attnlab.lens import inspect as lens

    _check_model(name)
    try:
        return lens.load_model(name)
    except (FileNotFoundError, ImportError) as err:
        raise ConfigError("model", name, f"cannot load: {err}") from err


def _task(name: str, seq_len: int) -> Any:
    from attnlab.lens.copy_task import CopyTask
    from attnlab.lens.inspect import MODEL_INFO

    _check_model(name)
    info = MODEL_INFO[name]
    return CopyTask(n=seq_len, low=info["low"], high=info["high"], bos=info["bos"])


def _heads(spec: str | None) -> list[tuple[int, int]] | None:
    from attnlab.lens.interventions import parse_heads

    return None if spec is None else parse_heads(spec)


def _layers(spec: str | None) -> list[int] | None:
    """``"17-29"`` or ``"3,5,17-18"`` → layer list; None → None (all layers)."""
    if spec is None:
        return None
    out: list[int] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        lo, _, hi = item.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError("layers", item, "not a layer or range", "e.g. 17-29 or 3,5,17") from None
        if b < a:
            raise ConfigError("layers", item, "empty range")
        out += [x for x in range(a, b + 1) if x not in out]
    if not out:
        raise ConfigError("layers", spec, "no layers given", "e.g. 17-29 or 3,5,17")
    return out


@intervene_app.command()
def ablate(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    heads: Annotated[str | None, typer.Option(help="heads, e.g. L18H6,L17H3 (default: top induction heads)")] = None,
    top_k: Annotated[int, typer.Option(help="without --heads: ablate this many top induction heads")] = 5,
    mode: Annotated[str, typer.Option(help="zero or mean (mean over a reference batch)")] = "zero",
    seq_len: Annotated[int, typer.Option(help="length of the random sequence x in [BOS] + x + x")] = 40,
    batch: Annotated[int, typer.Option(help="sequences measured")] = 8,
    seed: Annotated[int, typer.Option(help="seed of the measured batch")] = 0,
    random_draws: Annotated[int, typer.Option(help="control: sets of random heads of the same count")] = 3,
) -> None:
    """Ablate heads and measure copying on repeated random tokens; random heads of the same count as control."""

    def go() -> None:
        from attnlab.experiments.ablation import ablation_experiment

        chosen, task = _heads(heads), _task(model, seq_len)
        m, _ = _load(model)
        res = ablation_experiment(
            m,
            chosen,
            top_k=top_k,
            mode=mode,
            task=task,
            batch=batch,
            seed=seed,
            random_draws=random_draws,
        )
        console.print(res.table())
        if res.induction_scores:
            found = ", ".join(f"L{la}H{h} {s:.2f}" for (la, h), s in res.induction_scores.items())
            console.print(f"induction scores of the ablated heads (detected on seed {seed + 1}): {found}")
        if res.controls:
            console.print(
                f"copy loss: none {res.before.copy_loss:.3f}, chosen heads {res.after.copy_loss:.3f}, "
                f"random heads (mean of {len(res.controls)}) {res.control_mean():.3f}",
                highlight=False,
            )

    _guard(go)


@intervene_app.command()
def scale(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    heads: Annotated[str, typer.Option(help="heads to scale, e.g. L18H6,L17H3")] = "L18H6",
    coefs: Annotated[str, typer.Option(help="coefficients, e.g. 0,0.5,1,1.5,2")] = "0,0.5,1,1.5,2",
    seq_len: Annotated[int, typer.Option(help="length of the random sequence x in [BOS] + x + x")] = 40,
    batch: Annotated[int, typer.Option(help="sequences measured")] = 8,
    seed: Annotated[int, typer.Option(help="seed of the measured batch")] = 0,
) -> None:
    """Multiply heads' outputs by each coefficient and measure copying (coefficient 1 = the unchanged model)."""

    def go() -> None:
        from attnlab.experiments.ablation import scaling_experiment

        chosen, values, task = _heads(heads) or [], float_list("coefs", coefs), _task(model, seq_len)
        m, _ = _load(model)
        res = scaling_experiment(m, chosen, values, task=task, batch=batch, seed=seed)
        console.print(res.table())

    _guard(go)


@intervene_app.command()
def pear(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    layers: Annotated[str | None, typer.Option(help="re-weight every head of these layers, e.g. 10-29")] = None,
    heads: Annotated[str | None, typer.Option(help="or exactly these heads, e.g. L18H6,L17H3")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 40,
    batch: Annotated[int, typer.Option(help="sequences per step")] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate (authors: 5e-3 over 2500 steps of 20)")] = 3e-2,
    seq_len: Annotated[int, typer.Option(help="length of the random sequence x in [BOS] + x + x")] = 25,
    eval_batch: Annotated[int, typer.Option(help="held-out copying sequences")] = 32,
    sum_penalty: Annotated[float, typer.Option(help="weight of (Σ_h α − H)² per layer (authors: 0)")] = 0.0,
    text_chunks: Annotated[int, typer.Option(help="chunks of 128 tokens of real text for a side-effect loss")] = 4,
    seed: Annotated[int, typer.Option(help="seed of the training batches (held-out: another seed)")] = 0,
    top: Annotated[int, typer.Option(help="coefficients to list at each end")] = 10,
    select: Annotated[
        int | None, typer.Option(help="re-weight only the K heads found by the authors' path patching")
    ] = None,
) -> None:
    """Learn PEAR head coefficients on the copying proxy (model frozen); held-out copying before / after."""

    def go() -> None:
        from attnlab.experiments.pear import pear_experiment
        from attnlab.experiments.text import text_chunks as chunks
        from attnlab.lens.interventions import head_label

        if heads is not None and layers is not None:
            raise ConfigError("heads", heads, "give --heads or --layers, not both")
        if select is not None and (heads is not None or layers is not None):
            raise ConfigError("select", select, "selects the heads itself: give no --heads or --layers with it")
        if select is not None and select < 1:
            raise ConfigError("select", select, "must be at least 1 head")
        chosen, chosen_layers, task = _heads(heads), _layers(layers), _task(model, seq_len)
        m, tok = _load(model)
        text = chunks(tok, 128, text_chunks, from_end=True) if text_chunks > 0 else None
        every = max(1, steps // 10)

        def progress(step: int, loss: float) -> None:
            if step % every == 0 or step == steps - 1:
                console.print(f"step {step + 1}/{steps}: proxy copy loss {loss:.3f}", highlight=False)

        res = pear_experiment(
            m,
            chosen,
            layers=chosen_layers,
            task=task,
            steps=steps,
            batch=batch,
            lr=lr,
            sum_penalty=sum_penalty,
            eval_batch=eval_batch,
            seed=seed,
            text_tokens=text,
            on_step=progress,
            select=select,
        )
        if res.selection is not None:
            picked = ", ".join(f"{head_label(h)} ({float(res.selection.change[h]):+.3f})" for h in res.selection.heads)
            console.print(
                f"path patching (each head's direct path to the logits at its batch mean): copied-token logit "
                f"{res.selection.base:.3f}; selected {picked}",
                highlight=False,
            )
        console.print(res.table())
        console.print(res.coefficient_table(top))
        b, a = res.before, res.after
        console.print(
            f"held-out copying accuracy {b.copy_acc:.3f} → {a.copy_acc:.3f}, loss {b.copy_loss:.3f} → "
            f"{a.copy_loss:.3f} nats/token ({res.seconds:.0f} s)",
            highlight=False,
        )

    _guard(go)


@intervene_app.command()
def lofit(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    k: Annotated[int, typer.Option(help="heads LoFiT keeps, and PEAR's --select (authors: 3% of the heads)")] = 10,
    select_steps: Annotated[int, typer.Option(help="steps of step 1 (scaling vectors on every head)")] = 40,
    select_lr: Annotated[float, typer.Option(help="AdamW lr of step 1 (authors: 5e-4 to 5e-3, ~190 steps)")] = 1e-2,
    l1: Annotated[float, typer.Option(help="L1 weight on the scaling vectors (authors: 5e-4 to 5e-3)")] = 1e-3,
    steps: Annotated[int, typer.Option(help="steps of step 2 (offsets on the K heads)")] = 40,
    lr: Annotated[float, typer.Option(help="AdamW lr of step 2 (authors: 1e-2 to 2e-2)")] = 1e-2,
    pear_steps: Annotated[int, typer.Option(help="PEAR's steps (both PEAR rows)")] = 40,
    pear_lr: Annotated[float, typer.Option(help="PEAR's Adam lr")] = 3e-2,
    batch: Annotated[int, typer.Option(help="sequences per step, every method")] = 4,
    seq_len: Annotated[int, typer.Option(help="length of the random sequence x in [BOS] + x + x")] = 25,
    eval_batch: Annotated[int, typer.Option(help="held-out copying sequences (PEAR's held-out set)")] = 32,
    text_chunks: Annotated[int, typer.Option(help="chunks of 128 tokens of real text for a side-effect loss")] = 4,
    seed: Annotated[int, typer.Option(help="seed of the training batches (held-out: another seed)")] = 0,
    controls: Annotated[
        bool, typer.Option(help="also learn the offsets on PEAR's path-patching heads and on K random heads")
    ] = False,
) -> None:
    """LoFiT (select K heads by learned scaling vectors, then learn offsets on them; model frozen) against no change
    and PEAR (all heads; K heads by path patching), on PEAR's copying proxy and the same held-out sequences."""

    def go() -> None:
        from attnlab.experiments.lofit import lofit_experiment
        from attnlab.experiments.text import text_chunks as chunks
        from attnlab.lens.interventions import head_label

        for name, value in (("k", k), ("select_steps", select_steps), ("steps", steps), ("pear_steps", pear_steps)):
            if value < 1:
                raise ConfigError(name, value, "must be at least 1")
        for name, rate in (("select_lr", select_lr), ("lr", lr), ("pear_lr", pear_lr)):
            if not rate > 0:
                raise ConfigError(name, rate, "must be a positive number")
        if l1 < 0:
            raise ConfigError("l1", l1, "must be >= 0")
        task = _task(model, seq_len)
        m, tok = _load(model)
        text = chunks(tok, 128, text_chunks, from_end=True) if text_chunks > 0 else None

        def progress(stage: str, step: int, loss: float) -> None:
            total = select_steps if stage == "LoFiT selection" else steps if stage.startswith("LoFiT") else pear_steps
            if step == 1 or step % max(1, total // 4) == 0:
                console.print(f"{stage}: step {step}/{total}, proxy copy loss {loss:.3f}", highlight=False)

        res = lofit_experiment(
            m,
            task=task,
            k=k,
            select_steps=select_steps,
            select_lr=select_lr,
            l1=l1,
            steps=steps,
            lr=lr,
            batch=batch,
            pear_steps=pear_steps,
            pear_lr=pear_lr,
            eval_batch=eval_batch,
            seed=seed,
            text_tokens=text,
            on_step=progress,
            controls=controls,
        )
        console.print(res.table())
        console.print(res.heads_table())
        shared = res.overlaps()
        for name, heads in shared.items():
            listed = ", ".join(map(head_label, heads)) or "none"
            console.print(f"LoFiT's heads also in {name}: {len(heads)} of {k} ({listed})", highlight=False)
        console.print(f"{res.seconds:.0f} s", highlight=False)

    _guard(go)


@intervene_app.command()
def act(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    beta: Annotated[float, typer.Option(help="share of a hidden sink's attention it keeps (authors: 0.4)")] = 0.4,
    threshold: Annotated[float, typer.Option(help="column score above which a key is a sink (authors: 0.1)")] = 0.1,
    seq_len: Annotated[int, typer.Option(help="tokens per text chunk (with BOS)")] = 128,
    calib_chunks: Annotated[int, typer.Option(help="chunks for the head search (start of the text)")] = 2,
    heldout_chunks: Annotated[int, typer.Option(help="held-out chunks (end of the text)")] = 8,
    min_layer: Annotated[int, typer.Option(help="first layer calibrated (authors: 2)")] = 2,
    exclude_last: Annotated[int, typer.Option(help="final keys never counted as sinks (authors: 0)")] = 0,
    max_candidates: Annotated[int | None, typer.Option(help="try at most this many heads (default: all)")] = None,
) -> None:
    """ACT on real text: find heads whose calibration lowers the loss, then measure held-out text before / after."""

    def go() -> None:
        from attnlab.experiments.act import act_experiment
        from attnlab.experiments.text import text_chunks

        _check_model(model)
        if not 0.0 <= beta <= 1.0:
            raise ConfigError("beta", beta, "must be in [0, 1]")
        m, tok = _load(model)
        trials: list[float] = []

        def progress(head: tuple[int, int], loss: float) -> None:
            trials.append(loss)
            if len(trials) % 25 == 0:
                console.print(f"head search: {len(trials)} heads tried", highlight=False)

        calib = text_chunks(tok, seq_len, calib_chunks)
        held = text_chunks(tok, seq_len, heldout_chunks, from_end=True)
        res = act_experiment(
            m,
            calib,
            held,
            beta=beta,
            threshold=threshold,
            min_layer=min_layer,
            exclude_last=exclude_last,
            max_candidates=max_candidates,
            on_head=progress,
        )
        console.print(res.table())
        kept = ", ".join(f"L{la}H{h}" for (la, h), _ in res.selected[:20])
        summary = f"{len(res.candidates)} candidate heads; kept {len(res.selected)}: {kept or '-'}"
        console.print(summary, highlight=False)

    _guard(go)


TASKS = ("retrieval", "mcq")


@intervene_app.command()
def pine(
    model: Annotated[str, typer.Argument(help="a causal pretrained model: smollm2")],
    task: Annotated[str, typer.Option(help="retrieval (key-value records) or mcq (options rotated)")] = "retrieval",
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated: plain, pine, pine-mask-only, pine-positions-only, cca, uni-encoder (mcq only); "
            "default: all the task defines"
        ),
    ] = None,
    docs: Annotated[int, typer.Option(help="retrieval: records per prompt (key-value documents)")] = 5,
    mcq_format: Annotated[
        str, typer.Option(help="mcq: letters (A. option, answer a letter) or bare (- option, answer the option)")
    ] = "letters",
    prompts: Annotated[
        int, typer.Option(help="prompts (mcq: questions); each is run with its answer at every position")
    ] = 20,
    seed: Annotated[int, typer.Option(help="seed of the prompts")] = 0,
) -> None:
    """Position bias: accuracy by the answer's position, its mean and the flip rate, for the plain model, PINE
    (arXiv:2407.01100) and its two parts alone, concentric causal attention's text analogue (arXiv:2410.15926) and,
    on mcq, Uni-Encoder's one-pass candidate scoring (arXiv:2106.01263)."""

    def go() -> None:
        from attnlab.experiments.option_bias import FORMATS
        from attnlab.experiments.pine import LAYOUT_METHODS, METHODS, check_methods, position_bias, retrieval_prompts

        _check_model(model)
        if task not in TASKS:
            raise ConfigError("task", task, "not a position-bias task", TASKS)
        allowed = METHODS if task == "mcq" else tuple(LAYOUT_METHODS)
        chosen = list(allowed) if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
        check_methods(chosen, allowed)
        if mcq_format not in FORMATS:
            raise ConfigError("mcq_format", mcq_format, "not a multiple-choice format", FORMATS)
        if prompts < 1:
            raise ConfigError("prompts", prompts, "must be at least 1")
        m, tok = _load(model)
        if task == "retrieval":
            res = position_bias(m, retrieval_prompts(tok, docs, prompts, seed), chosen)
        else:
            from attnlab.experiments.option_bias import option_prompts
            from attnlab.experiments.prompts.mcq import LETTERS
            from attnlab.lens.inspect import MODEL_INFO

            questions = option_prompts(tok, prompts, seed, bos=MODEL_INFO[model]["bos"], fmt=mcq_format)
            res = position_bias(m, questions, chosen, position_names=LETTERS)
        console.print(res.table(), highlight=False)

    _guard(go)


if __name__ == "__main__":
    intervene_app()
