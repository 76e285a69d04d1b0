"""Diagnosis of the demo's failures (docs/diagnosis.md): Cog attention in its authors' layout, longer.

``diagnose_cog.py``'s authors' layout (3 layers: Cog between two softmax layers) with 4000 steps instead of 1500,
as ``diagnose_steps.py`` does for the demo's 2-layer Cog; one seed.

    attnlab run sweeps/diagnose_cog_steps.py --db runs/diagnose_cog_steps.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="diagnose-cog-steps",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "cog", "edge_normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 3, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=4000, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
