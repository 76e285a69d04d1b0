"""CAB's causal cross-attention pattern (Zhang et al. 2023, arXiv:2210.07661) on running sums: an encoder-decoder with
causal cross-attention over a causal encoder (``model.causal_cross``), target i = the sum mod 10 of the source up to
i − delay, at delays 0 and 3; evaluated at the training length and at 2×.

    attnlab run sweeps/prefix_sum_causal_cross.py --db runs/prefix_sum.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.prefix_sum import PrefixSumConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="prefix-sum-causal-cross",
    tasks=[PrefixSumConfig(modulus=10, length=16, delay=delay) for delay in (0, 3)],
    mechanisms=[{"normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4, "causal_cross": True},
    train=TrainConfig(steps=1000, batch_size=64, eval_every=250, eval_examples=512, extrapolate=[2.0]),
)
