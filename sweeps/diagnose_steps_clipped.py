"""Diagnosis of the demo's failures (docs/diagnosis.md): the step budget.

The demo's clipped softmax run (``attnlab.sweeps.quick``: γ = −0.025, ζ = 1; lr 1e-3, seed 0) with 4000 steps
instead of 1500, as ``diagnose_steps.py`` does for Cog.

    attnlab run sweeps/diagnose_steps_clipped.py --db runs/diagnose_steps.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="diagnose-steps-clipped",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "clipped_softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=4000, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
