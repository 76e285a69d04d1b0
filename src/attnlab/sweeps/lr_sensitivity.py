"""Learning-rate sensitivity with and without qk-norm and z-loss (Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities", arXiv:2309.14322, Figures 1 and 6 at CPU scale).

Byte-level language modelling on the Python standard library at widths 64, 128 and 256 (2 layers, 4 heads), seven
learning rates from 1e-4 to 1e-1, four variants: plain softmax attention, with qk-layernorm, with z-loss 1e-4, with
both; every run probed at each evaluation (``train.probes``: the attention logits, log Z). Read it with
``attnlab sensitivity DB --out DIR`` (the measure, the best learning rates, plots of loss and attention logits
against the learning rate).

84 runs; run it with ``attnlab run lr-sensitivity --db runs/lr-sensitivity.sqlite --workers 2 --threads 1``
(resumable).
"""

from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.stats.halving import log_grid
from attnlab.train.config import TrainConfig

TASK = {"name": "lm", "corpus": "stdlib", "tokenizer": "byte", "length": 64}
MECHANISMS = [{"normaliser": "softmax"}, {"normaliser": "softmax", "qk_norm": "layernorm"}]
LRS = list(log_grid(1e-4, 1e-1, 7))
TRAIN = TrainConfig(steps=300, batch_size=16, eval_every=100, eval_examples=64, probes=True)


def _part(name: str, train: TrainConfig) -> Sweep:
    return Sweep(
        name=name,
        tasks=[TASK],
        mechanisms=MECHANISMS,
        positions=["rope"],
        widths=[64, 128, 256],
        lrs=LRS,
        seeds=[0],
        model={"n_layers": 2, "n_heads": 4},
        train=train,
    )


SWEEP = Suite(
    name="lr-sensitivity",
    parts=[_part("plain", TRAIN), _part("z-loss", TRAIN.model_copy(update={"z_loss": 1e-4}))],
)
