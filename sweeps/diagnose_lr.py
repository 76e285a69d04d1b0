"""Diagnosis of the demo's failures (docs/diagnosis.md): the learning rate.

The demo (``attnlab.sweeps.quick``: MQAR vocab 64, length 32, 4 pairs; 2 layers, width 64, 4 heads, no MLP, RoPE;
batch 64, 1500 steps, early stop at 0.99) tries Cog and clipped softmax at lr 1e-3 and 3e-3; this sweep reruns 1e-3
and adds the ends of a log grid, 3e-4 and 1e-2, with everything else the demo's. One seed (the demo's).

    attnlab run sweeps/diagnose_lr.py --db runs/diagnose_lr.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="diagnose-lr",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "cog"}, {"normaliser": "clipped_softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[3e-4, 1e-3, 1e-2],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
