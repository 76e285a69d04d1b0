"""The demo sweep: six attention mechanisms on MQAR, small enough for a few minutes on 2 CPU cores."""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="quick",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[
        {"normaliser": "softmax"},
        {"normaliser": "sigmoid"},
        {"normaliser": "cog"},  # plain: in a 2-layer model the authors' softmax edge layers would be every layer
        {"normaliser": "lssa"},
        {"normaliser": "clipped_softmax"},
        {"normaliser": "softmax", "heads": "gated"},
    ],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3, 3e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
