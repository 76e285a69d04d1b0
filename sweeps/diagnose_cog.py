"""Diagnosis of the demo's failures (docs/diagnosis.md): Cog attention in its authors' layout.

Cog attention (Lv et al. 2024, arXiv:2411.07176) is used by its authors with plain softmax in the first and last
layers and Cog in between (trestad/CogAttn, ``Cogformer/model.py``, ``attn_type='np'``). The demo's model has two
layers, so that layout would be all softmax; it runs Cog in every layer instead. Here, with three layers (one Cog
layer between two softmax layers) at the demo's task, width, heads, batch, steps and learning rate 1e-3: softmax
everywhere, the authors' layout, and Cog everywhere; two seeds.

    attnlab run sweeps/diagnose_cog.py --db runs/diagnose_cog.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="diagnose-cog",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[
        {"normaliser": "cog", "edge_normaliser": "softmax"},
        {"normaliser": "cog"},
        {"normaliser": "softmax"},
    ],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0, 1],
    model={"n_layers": 3, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
