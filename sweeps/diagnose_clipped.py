"""Diagnosis of the demo's failures (docs/diagnosis.md): clipped softmax's γ against the model's length.

Clipped softmax (Bondarenko et al. 2023, arXiv:2306.12929) gives a key exactly zero weight, and no gradient of
its own, once its softmax probability falls below −γ / (ζ − γ). The authors scale γ with the training length,
γ = −α / T (their OPT script: α = 12 at T = 512; their BERT script: γ = −0.025 at T = 128, α = 3.2). The demo uses
γ = −0.025 at T = 32 (α = 0.8). Here: γ = 0 (with ζ = 1 this is softmax: the control that the code path learns),
γ = −0.0025 and the demo's γ = −0.025; ζ = 1 throughout. The demo's model, task and budget
(``attnlab.sweeps.quick``) at its better learning rate for softmax, 1e-3; two seeds. The authors' α at T = 32:
``diagnose_clipped_alpha.py``.

    attnlab run sweeps/diagnose_clipped.py --db runs/diagnose_clipped.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.tasks.mqar import MQARConfig
from attnlab.train.config import TrainConfig

CLIPPED_ARGS = [{"gamma": 0.0}, {"gamma": -0.0025}, {"gamma": -0.025}]

SWEEP = Sweep(
    name="diagnose-clipped",
    tasks=[MQARConfig(vocab=64, length=32, num_kv_pairs=4)],
    mechanisms=[{"normaliser": "clipped_softmax", "normaliser_args": {**args, "zeta": 1.0}} for args in CLIPPED_ARGS],
    positions=["rope"],
    widths=[64],
    lrs=[1e-3],
    seeds=[0, 1],
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1500, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99),
)
