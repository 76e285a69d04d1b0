"""The demo sweep: six attention mechanisms on MQAR, three seeds each, with a learning-rate search, small enough for
a few minutes on 2 CPU cores.

Each mechanism's learning rate is searched by successive halving (``attnlab.runner.search``): both rates train
every seed to 300 steps, the better one by mean evaluation loss continues from its checkpoints to 1200. The
leaderboard then shows the mean over the three seeds with a 95% interval, which mechanisms cannot be told apart
from the best, and the step at which MQAR was learned.

Clipped softmax uses its authors' rule γ = −α/T with α = 3.2 (their BERT setting, γ = −0.025 at T = 128), which is
γ = −0.1 at this length; the unscaled −0.025 stays at chance here. Cog learns this MQAR only with about 4000 steps,
well beyond the demo's budget. Both findings, with their evidence: docs/diagnosis.md.
"""

from attnlab.runner.config import SearchConfig, Sweep
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
        {"normaliser": "clipped_softmax", "normaliser_args": {"alpha": 3.2}},
        {"normaliser": "softmax", "heads": "gated"},
    ],
    positions=["rope"],
    widths=[64],
    seeds=[0, 1, 2],
    search=SearchConfig(lrs=[1e-3, 3e-3], min_steps=300),
    model={"n_layers": 2, "n_heads": 4, "mlp": False},
    train=TrainConfig(steps=1200, batch_size=64, eval_every=100, eval_examples=256, target_accuracy=0.99),
)
