"""An example sweep file with a normaliser of its own: softmax with +1 in the denominator ("softmax1").

    w_ij = exp(s_ij) / (1 + Σ_j' exp(s_ij'))      (a query may attend to nothing)

Registered here, it runs like the zoo's entries in every backend: the runs that use it record this file, and the
workers import it. Check it, then run it:

    attnlab check sweeps/softmax1.py
    attnlab run sweeps/softmax1.py --db runs/softmax1.sqlite --workers 2

docs/extending.md walks through a normaliser with a chunked fast path, a heads entry, a position and a task.
"""

from torch import Tensor

from attnlab.attention.normalisers.base import NORMALISERS, NoParams, NormaliserBase
from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig


@NORMALISERS.register("softmax1", summary="softmax with +1 in the denominator", params=NoParams)
class Softmax1(NormaliserBase):
    def __init__(self, params: NoParams | None = None, site: object | None = None):
        super().__init__()  # a factory is called with (params, site), here unused

    def forward(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        m = scores.amax(-1, keepdim=True).clamp(min=0)  # the +1 is exp(0): shift by max(0, row max)
        e = (scores - m).exp()
        return e / ((-m).exp() + e.sum(-1, keepdim=True))


SWEEP = Sweep(
    name="softmax1",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "softmax"}, {"normaliser": "softmax1"}],
    positions=["rope"],
    widths=[64],
    seeds=[0, 1],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=600, batch_size=64, eval_every=100, eval_examples=512),
)
