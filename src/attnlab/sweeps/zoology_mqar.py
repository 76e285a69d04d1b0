"""Zoology's MQAR grid (Arora et al. 2023, arXiv:2312.04927, Figure 2), scaled to a CPU.

Zoology sweeps (sequence length, key-value pairs) over (64, 4), (128, 8), (256, 16), (512, 64), model widths
64 … 512, four learning rates log-spaced in 1e-4 … 1e-2, with a vocabulary of 8192 and 2-layer models, and
plots accuracy against width, one line per mixer. Here: the first three (length, pairs) points, widths
32 / 64 / 128, learning rates 1e-3 / 3e-3 / 1e-2, a vocabulary of 256 and attention-only 2-layer models (on a
CPU these learn MQAR far faster than models with MLPs), for the attention mechanisms Zoology compares
(softmax, Based, linear attention) plus sigmoid and Hedgehog. 135 runs: a few hours on 2 cores.

``attnlab run zoology-mqar --db runs/zoology.sqlite --report runs/zoology`` writes the accuracy-vs-width plot
per sequence length.
"""

from attnlab.runner.config import Sweep
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="zoology-mqar",
    tasks=[
        {"name": "mqar", "vocab": 256, "length": length, "num_kv_pairs": pairs}
        for length, pairs in ((64, 4), (128, 8), (256, 16))
    ],
    mechanisms=[
        {"normaliser": "softmax"},
        {"normaliser": "based"},
        {"normaliser": "linear_elu"},
        {"normaliser": "sigmoid"},
        {"normaliser": "hedgehog"},
    ],
    positions=["rope"],
    widths=[32, 64, 128],
    lrs=[1e-3, 3e-3, 1e-2],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 1, "mlp": False},
    train=TrainConfig(steps=3000, batch_size=64, eval_every=200, eval_examples=1000, target_accuracy=0.99),
)
