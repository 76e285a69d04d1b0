"""Diagnosis of landmark attention on passkey (docs/long-context.md): blocks of 16 instead of the preset's 8.

In ``longctx-passkey`` (``attnlab.sweeps.longctx_passkey``) landmark attention with blocks of 8 reaches 0.298
accuracy in 800 steps where softmax on the same stream reaches 0.901. With blocks of 8 the 6-token needle and the
6-token answer are often cut across blocks, so reading a digit's successor needs a second retrieval; blocks of 16
cut them less often. Same model, task, learning rate and budget as the preset; no length extrapolation (only the
training length is in question here) and 128 evaluation examples, to save time.

    attnlab run sweeps/diagnose_landmark_block.py --db runs/diagnose_landmark.sqlite --workers 1 --threads 1
"""

from attnlab.runner.config import Sweep
from attnlab.sweeps.longctx_passkey import PASSKEY, TRAIN

SWEEP = Sweep(
    name="diagnose-landmark-block",
    tasks=[{"name": "landmarks", "task": PASSKEY, "block": 16}],
    mechanisms=[{"normaliser": "softmax", "heads": "landmark", "heads_args": {"block": 16}}],
    positions=["rope"],
    widths=[64],
    lrs=[2e-3],
    model={"n_layers": 2, "n_heads": 4},
    train=TRAIN.model_copy(update={"extrapolate": [], "eval_examples": 128}),
)
