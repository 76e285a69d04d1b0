"""An example sweep file: softmax and Cog attention on MQAR under five position encodings.

Run it with ``attnlab run sweeps/mqar_positions.py --db runs/positions.sqlite --report runs/positions``.
A sweep file is plain Python that defines ``SWEEP``; copy this one to start your own.
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="mqar-positions",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "softmax"}, {"normaliser": "cog", "edge_normaliser": "softmax"}],
    positions=["nope", "learned", "sinusoidal", "rope", "alibi"],
    widths=[64],
    lrs=[1e-3, 3e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, target_accuracy=0.99),
)
