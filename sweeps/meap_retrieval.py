"""MEAP (Zhuang et al. 2025, arXiv:2502.07490) on MQAR and passkey: 15% of each training batch's input tokens are
replaced by the mask token (the reserved id one past the task's vocabulary), evaluation is unmasked; compare with
meap_retrieval_baseline.py, the same runs without masking.

    attnlab run sweeps/meap_retrieval.py --db runs/meap.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.passkey import PasskeyConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="meap-retrieval",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4), PasskeyConfig(length=32, digits=3)],
    mechanisms=[{"normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=250, eval_examples=512, meap_mask_fraction=0.15),
)
