"""Addition in three digit formats (Shen et al. 2023, arXiv:2311.14737; Zhou et al. 2024, arXiv:2402.09371): plain
(most significant digit first), reversed (least significant first) and reversed with index hints, 3-digit operands,
evaluated at the training length and at 2× (6-digit operands, ``with_length``). Per-digit accuracy of the answer.

    attnlab run sweeps/arithmetic_formats.py --db runs/arithmetic_formats.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.addition import AdditionConfig
from attnlab.train.config import TrainConfig

SWEEP = Sweep(
    name="arithmetic-formats",
    tasks=[AdditionConfig(digits=3, format=fmt) for fmt in ("plain", "reversed", "index_hints")],
    mechanisms=[{"normaliser": "softmax"}],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0],
    model={"n_layers": 2, "n_heads": 4},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=250, eval_examples=512, extrapolate=[2.0]),
)
