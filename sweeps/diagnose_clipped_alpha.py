"""Diagnosis of the demo's failures (docs/diagnosis.md): clipped softmax's γ against the model's length.

The authors' scaling of clipped softmax's γ with the training length, γ = −α / T (Bondarenko et al. 2023,
arXiv:2306.12929; their BERT script: γ = −0.025 at T = 128, α = 3.2; their OPT script: α = 12), at the demo's
T = 32: γ = −0.1 and γ = −0.375, ζ = 1. Otherwise as ``diagnose_clipped.py`` (the demo's model, task, budget,
lr 1e-3), two seeds.

    attnlab run sweeps/diagnose_clipped_alpha.py --db runs/diagnose_clipped.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

CLIPPED_ARGS = [{"alpha": 3.2}, {"alpha": 12.0}]

SWEEP = Sweep(
    name="diagnose-clipped-alpha",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "clipped_softmax", "normaliser_args": {**args, "zeta": 1.0}} for args in CLIPPED_ARGS],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0, 1],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
