"""the baseline of meap_retrieval.py: the same runs without masking.

attnlab run sweeps/meap_retrieval_baseline.py --db runs/meap.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.passkey import PasskeyConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="meap-retrieval-baseline",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4), PasskeyConfig(length=32, digits=3)],
    mechanisms=[{"normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=250, eval_examples=512),
)
