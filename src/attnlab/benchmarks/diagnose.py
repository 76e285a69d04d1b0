"""Probes behind docs/diagnosis.md: why Cog and clipped softmax stay at chance on the demo's MQAR.

    python bench/diagnose_mechanisms.py paths      # the demo's dispatch path vs the reference, float64
    python bench/diagnose_mechanisms.py init       # gradients and clipped / negative weights at initialisation
    python bench/diagnose_mechanisms.py threshold  # clipped softmax: the probability below which a key gets 0
    python bench/diagnose_mechanisms.py schedule   # the learning rate at each step under two budgets
    python bench/diagnose_mechanisms.py represent  # can a head attend to the previous token alone (T = 32, RoPE)
    python bench/diagnose_mechanisms.py runs DB [DB ...]      # one row per finished run of the sweeps
    python bench/diagnose_mechanisms.py trained DB [DB ...]   # what each finished run's heads learned

The model and task are the demo's (``attnlab.sweeps.quick``: MQAR vocab 64, length 32, 4 pairs; 2 layers, width
64, 4 heads, no MLP, RoPE). ``trained`` reads the checkpoints a sweep stored (``attnlab run ... --db DB``) and
measures, on 512 evaluation sequences, the two heads a 2-layer attention-only model needs for MQAR (Olsson et al.,
"In-context Learning and Induction Heads", 2022, arXiv:2209.11895): in layer 0 a previous-token head (each value
position reads its key), in the last layer a lookup (each query reads the position after its key's first
occurrence, which holds the value).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor, nn

from attnlab.attention.config import AttentionConfig
from attnlab.attention.normalisers import NORMALISERS
from attnlab.hook_points import capture
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model
from attnlab.model.explain import explain_model
from attnlab.runner.checkpoint_model import load_run
from attnlab.runner.config import run_from_json
from attnlab.runner.store import Store
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig
from attnlab.train.loop import loss_and_accuracy, lr_at

TASK = MQARConfig(vocab=64, length=32, num_kv_pairs=4)
MECHANISMS: dict[str, AttentionConfig] = {
    "softmax": AttentionConfig(normaliser="softmax"),
    "cog": AttentionConfig(normaliser="cog"),
    "clipped γ=-0.025 (demo)": AttentionConfig(normaliser="clipped_softmax"),
    "clipped α=3.2 (γ=-0.1)": AttentionConfig(normaliser="clipped_softmax", normaliser_args={"alpha": 3.2}),
    "clipped α=12 (γ=-0.375)": AttentionConfig(normaliser="clipped_softmax", normaliser_args={"alpha": 12.0}),
}


def demo_model_config(attention: AttentionConfig, n_layers: int = 2) -> ModelConfig:
    """The demo's model (``attnlab.sweeps.quick``) with ``attention``."""
    return ModelConfig(
        vocab_size=TASK.vocab_size,
        d_model=64,
        n_layers=n_layers,
        n_heads=4,
        mlp=False,
        max_seq_len=TASK.seq_len,
        attention=attention,
    )


def eval_batch(n: int = 512, seed: int = 0) -> tuple[Tensor, Tensor]:
    batch = TASK.build(seed).eval_batch(n)
    return batch.inputs, batch.targets


def patterns(model: nn.Module, tokens: Tensor, detach: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Logits and each layer's attention weights [B, H, T, T] (``blocks.{L}.attn.hook_pattern``)."""
    with capture(model, lambda name: name.endswith("attn.hook_pattern"), detach=detach) as cache:
        logits = model(tokens)
    layers = sorted(cache, key=lambda name: int(name.split(".")[1]))
    return logits, [cache[name] for name in layers]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def paths() -> None:
    """Each layer's dispatch path in the demo, and |logits(auto) − logits(reference)| in float64 with the same weights
    (also the chunked backend, the path a longer sequence or another device may take)."""
    tokens, _ = eval_batch(64)
    rows = []
    for name in ("cog", "clipped γ=-0.025 (demo)"):
        attention = MECHANISMS[name]
        auto_cfg = demo_model_config(attention)
        chosen = {r.path for r in explain_model(auto_cfg)}
        torch.manual_seed(0)
        reference = build_model(demo_model_config(attention.model_copy(update={"backend": "reference"}))).double()
        state = reference.state_dict()
        logits_ref = reference(tokens)
        for backend in ("auto", "chunked"):
            other = build_model(demo_model_config(attention.model_copy(update={"backend": backend}))).double()
            other.load_state_dict(state)
            diff = (other(tokens) - logits_ref).abs().max().item()
            path = ",".join(sorted(chosen)) if backend == "auto" else "chunked"
            rows.append([name, backend, path, f"{diff:.2e}"])
    print_table(["mechanism", "backend", "path", "max |logits − reference logits| (float64)"], rows)


def grad_groups(model: nn.Module) -> dict[str, float]:
    """Gradient norm per group of parameters (embedding; each layer's q/k/v/o projections)."""
    groups: dict[str, list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if name.startswith("blocks."):
            layer = name.split(".")[1]
            kind = "qk" if any(f"{x}_proj" in name for x in "qk") else "vo" if "proj" in name else "norm"
            key = f"L{layer}.{kind}"
        else:
            key = "embed" if "embed" in name else "final"
        groups.setdefault(key, []).append(p.grad)
    return {k: torch.cat([g.flatten() for g in gs]).norm().item() for k, gs in groups.items()}


def init() -> None:
    """At initialisation (seed 0), on one batch of 64 training sequences: the gradient norm of each parameter group,
    and per layer the share of visible weights that are exactly 0 (clipped), of query rows whose visible weights are
    all 0, and of negative weights (Cog)."""
    batch = TASK.build(0).train_batch(1, 64)
    grad_rows, weight_rows = [], []
    for name, attention in MECHANISMS.items():
        torch.manual_seed(0)
        model = build_model(demo_model_config(attention))
        logits, weights = patterns(model, batch.inputs)
        loss, _ = loss_and_accuracy(logits, batch.targets)
        loss.backward()
        norms = grad_groups(model)
        grad_rows.append([name] + [f"{norms.get(k, 0.0):.2e}" for k in GRAD_KEYS])
        visible = torch.ones(TASK.seq_len, TASK.seq_len).tril().bool()
        for layer, w in enumerate(weights):
            w = w.detach()
            vis = w[..., visible]
            zero_rows = ((w == 0) | ~visible).all(-1).float().mean().item()
            weight_rows.append(
                [
                    name,
                    str(layer),
                    f"{(vis == 0).float().mean().item():.3f}",
                    f"{zero_rows:.3f}",
                    f"{(vis < 0).float().mean().item():.3f}",
                    f"{w.sum(-1).mean().item():.3f}",
                ]
            )
    print("gradient norm per parameter group at initialisation (seed 0, one batch of 64)")
    print_table(["mechanism", *GRAD_KEYS], grad_rows)
    print()
    print_table(["mechanism", "layer", "visible weights = 0", "rows all 0", "weights < 0", "mean row sum"], weight_rows)


GRAD_KEYS = ["embed", "L0.qk", "L0.vo", "L1.qk", "L1.vo"]


def clipped_dead_rows(gamma: float, zeta: float, t: int) -> list[int]:
    """The causal rows (by their number of visible keys n) of clipped softmax at uniform scores whose weights are all
    exactly 0 and whose scores get no gradient: measured on the normaliser, not computed from the formula."""
    entry = NORMALISERS.entry("clipped_softmax")
    norm = entry.factory(entry.params(gamma=gamma, zeta=zeta), None)
    scores = torch.zeros(1, 1, t, t, requires_grad=True)
    w = norm(scores, torch.ones(t, t).tril().bool())
    w.sum().backward()
    grad = scores.grad
    assert grad is not None
    return [n for n in range(1, t + 1) if (w[0, 0, n - 1, :n] == 0).all() and (grad[0, 0, n - 1] == 0).all()]


def threshold() -> None:
    """Clipped softmax w = clip((ζ − γ)p + γ, 0, 1) is exactly 0, with no gradient of its own, where p ≤ −γ/(ζ − γ);
    with near-uniform scores (initialisation) a causal row with n visible keys has p = 1/n, so every row with
    n ≥ (ζ − γ)/(−γ) keys is all zero and passes no gradient. Measured on the normaliser itself (ζ = 1, T = 32)."""
    t = TASK.seq_len
    rows = []
    for label, gamma in [("γ=-0.0025", -0.0025), ("γ=-0.025 (demo)", -0.025), ("α=3.2", -3.2 / t), ("α=12", -12 / t)]:
        dead = clipped_dead_rows(gamma, 1.0, t)
        p_star = -gamma / (1.0 - gamma)
        rows.append(
            [
                label,
                f"{gamma:.4f}",
                f"{p_star:.4f}",
                f"{1 / p_star:.1f}",
                str(dead[0]) if dead else f"none (n ≤ {t})",
                f"{len(dead)}/{t}",
            ]
        )
    print_table(
        ["clipped softmax", "γ", "p* = −γ/(ζ−γ)", "1/p*", "first dead row (n keys)", "dead rows at uniform p"], rows
    )


def represent() -> None:
    """Can one head of the normaliser attend to the previous token alone (a one-hot positional lookup) at T = 32 with
    the model's RoPE? The same token at every position (so the scores depend on the offset only), and the demo
    model's first layer (its norm, q/k projections, RoPE) trained by Adam (lr 0.01, 600 steps) to maximise the mean
    weight on the previous token over rows 1 … T − 1; the best head's mean and smallest weight over the rows."""
    tokens = torch.zeros(1, TASK.seq_len, dtype=torch.long)
    idx = torch.arange(1, TASK.seq_len)
    rows = []
    for name, attention in MECHANISMS.items():
        torch.manual_seed(0)
        model = build_model(demo_model_config(attention, n_layers=1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(600):
            _, (w,) = patterns(model, tokens, detach=False)
            loss = -w[0, :, idx, idx - 1].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            _, (w,) = patterns(model, tokens)
        prev = w[0, :, idx, idx - 1]  # [H, T-1]
        best = prev.mean(-1).argmax()
        others = w[0, best].abs().sum(-1)[idx] - prev[best].abs()
        rows.append(
            [
                name,
                f"{prev[best].mean().item():.3f}",
                f"{prev[best].min().item():.3f}",
                f"{others.max().item():.3f}",
            ]
        )
    print_table(["mechanism", "w(previous) mean", "w(previous) min", "max Σ |w| on other keys"], rows)


def schedule() -> None:
    """The learning rate (``attnlab.train.loop.lr_at``: 5 % linear warmup, cosine decay to 10 %) at lr 1e-3 under the
    demo's 1500-step budget and a 4000-step one, and its sum up to each step (how far AdamW can have moved)."""
    steps = [100, 500, 900, 1100, 1300, 1500]
    rows = []
    for budget in (1500, 4000):
        cfg = TrainConfig(steps=budget, lr=1e-3)
        lrs = [lr_at(s, cfg) for s in range(budget)]
        rows.append([str(budget), "lr", *(f"{lrs[s - 1]:.2e}" for s in steps)])
        rows.append([str(budget), "Σ lr", *(f"{sum(lrs[:s]):.3f}" for s in steps)])
    print_table(["budget", "", *(f"step {s}" for s in steps)], rows)


def runs_table(dbs: list[str]) -> None:
    """One row per finished run of the databases: its mechanism, depth, lr, seed and step budget, the accuracy it
    ended with, the steps it ran (the early stop at 0.99 ends a run that learns) and the first evaluation (every
    100 steps) at which its accuracy passed 0.5, the sign that the lookup had begun to form."""
    rows = []
    for db in dbs:
        with Store(db) as store:
            for r in store.runs(status="done"):
                cfg = run_from_json(r["config"])
                acc = [(step, v) for step, name, v in store.curves(r["run_id"]) if name == "eval_accuracy"]
                half = next((str(step) for step, v in acc if v >= 0.5), "never")
                rows.append(
                    [
                        cfg.model.attention.label,
                        str(cfg.model.n_layers),
                        f"{cfg.train.lr:g}",
                        str(cfg.seed),
                        str(cfg.train.steps),
                        f"{r['final']['accuracy']:.3f}",
                        f"{int(r['final']['steps'])}",
                        half,
                    ]
                )
    rows.sort(key=lambda row: (row[1], row[0], row[4], float(row[2]), row[3]))
    print_table(["mechanism", "layers", "lr", "seed", "budget", "accuracy", "steps run", "accuracy ≥ 0.5 at"], rows)


def value_positions(tokens: Tensor, n_pairs: int) -> Tensor:
    """[B, T] index of the value each query asks for (the position after its key's occurrence), −1 elsewhere."""
    keys = tokens[:, : 2 * n_pairs : 2]  # [B, P]
    out = torch.full_like(tokens, -1)
    for j in range(n_pairs):
        is_query = tokens == keys[:, j : j + 1]
        is_query[:, : 2 * n_pairs] = False
        out = torch.where(is_query, torch.full_like(out, 2 * j + 1), out)
    return out


def trained(dbs: list[str]) -> None:
    """For each finished run with a checkpoint, on the evaluation set of seed 0: accuracy; the previous-token weight
    at the value positions (the best head of the layers before the last, mean over sequences and positions), and the
    share of layer 0's weights (every head) on the previous token there that are exactly 0; the
    lookup's weight on the asked pair (its value's position and the next) at the query positions (the best head of the
    layers after the first), the share of those weights that are exactly 0 or negative, and that head's weight summed
    over positions 1 … 2P (a head that averages the values, the bag-of-values guess right 1 in P times, puts ~1 there).
    """
    tokens, targets = eval_batch(512)
    n_pairs = TASK.num_kv_pairs
    rows = []
    for db in dbs:
        with Store(db) as store:
            runs = [r for r in store.runs(status="done") if store.checkpoint_path(r["run_id"]).is_file()]
        for row in runs:
            model, cfg = load_run(db, row["run_id"])
            with torch.no_grad():
                logits, weights = patterns(model, tokens)
            _, acc = loss_and_accuracy(logits, targets)
            idx = torch.arange(1, 2 * n_pairs, 2)  # the value positions: each must read its key, one back
            prev_layer, prev = max(
                ((i, w[:, :, idx, idx - 1].mean((0, 2)).max().item()) for i, w in enumerate(weights[:-1])),
                key=lambda x: x[1],
            )
            prev_zero = (weights[0][:, :, idx, idx - 1] == 0).float().mean().item()  # layer 0, every head
            asked = value_positions(tokens, n_pairs)
            b, t = (targets != -100).nonzero(as_tuple=True)
            # the lookup: the (layer ≥ 1, head) with the largest mean weight on the asked value's position or the one
            # after it (a model may copy key and value into the next position and read there instead)
            looks = [(i, w[b, :, t, asked[b, t]] + w[b, :, t, asked[b, t] + 1]) for i, w in enumerate(weights) if i > 0]
            look_layer, w_target = max(looks, key=lambda x: x[1].mean(0).max().item())
            best = w_target.mean(0).argmax()
            on_values = weights[look_layer][b, :, t][:, best, 1 : 2 * n_pairs + 1].sum(-1)
            rows.append(
                [
                    cfg.model.attention.label,
                    str(cfg.model.n_layers),
                    f"{cfg.train.lr:g}",
                    str(cfg.seed),
                    str(cfg.train.steps),
                    f"{acc.item():.3f}",
                    f"{prev:.2f} (L{prev_layer})",
                    f"{prev_zero:.2f}",
                    f"{w_target[:, best].mean().item():.2f} (L{look_layer})",
                    f"{(w_target[:, best] == 0).float().mean().item():.2f}",
                    f"{(w_target[:, best] < 0).float().mean().item():.2f}",
                    f"{on_values.mean().item():.2f}",
                ]
            )
    rows.sort(key=lambda row: (row[1], row[0], row[4], float(row[2]), row[3]))
    print_table(
        [
            "mechanism",
            "layers",
            "lr",
            "seed",
            "budget",
            "accuracy",
            "prev-token w",
            "L0 prev = 0",
            "lookup w(asked pair)",
            "= 0",
            "< 0",
            "lookup Σ w(pairs)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["paths", "init", "threshold", "represent", "schedule", "runs", "trained"])
    parser.add_argument("dbs", nargs="*", help="results databases (trained)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe in ("runs", "trained"):
        if not args.dbs:
            parser.error(f"{args.probe} needs at least one results database")
        (runs_table if args.probe == "runs" else trained)(args.dbs)
    else:
        {"paths": paths, "init": init, "threshold": threshold, "represent": represent, "schedule": schedule}[
            args.probe
        ]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
