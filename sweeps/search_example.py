"""An example sweep with a learning-rate search: softmax and sigmoid attention on MQAR, each at its own best rate.

Instead of a fixed list of learning rates, ``search`` trains nine log-spaced rates from 3e-4 to 3e-2 over three
seeds for 100 steps, continues the best third of them from their checkpoints to 300 steps, and the best of those
to the full 900 (successive halving, docs/search.md): 3 × 9 × 100 + 3 × 3 × 200 + 3 × 600 = 6,300 steps per
mechanism instead of the 24,300 of the whole grid at 900 steps. Run it, stop it at any point, and run it again:

    attnlab run sweeps/search_example.py --db runs/search_example.sqlite
    attnlab search-status sweeps/search_example.py --db runs/search_example.sqlite
"""

from attnlab.runner.config import SearchConfig, Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="search-example",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "softmax"}, {"normaliser": "sigmoid"}],
    positions=["rope"],
    widths=[64],
    seeds=[0, 1, 2],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=900, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
    search=SearchConfig(low=3e-4, high=3e-2, points=9, min_steps=100, eta=3),
)
