"""Long-context passkey: landmark attention and CCA against softmax, trained at length T = 64 and evaluated at T, 2T,
4T and 8T (passkey: Mohtashami & Jaggi 2023, arXiv:2305.16300, §4.2, the task landmark attention was shown on).

Three parts, one database, one report:

- ``passkey``: the plain passkey stream; softmax and Core Context Aware attention (Chen et al. 2024,
  arXiv:2412.12465) with groups of 4 tokens and a 16-token window, RoPE;
- ``passkey-ntk``: softmax with dynamic NTK-scaled RoPE, an existing long-context entry (it changes nothing up to
  T, so it trains the same model as softmax with RoPE and differs only beyond T);
- ``passkey-landmarks``: the same passkey with a landmark token after every 8 tokens (``landmarks`` task: 72
  positions at T = 64); landmark attention with ``block`` 8, and softmax on the same stream as its control.

Every run: 2 layers, 4 heads, width 64, learning rate 2e-3, 800 steps of 64 examples (the standard suite's passkey
budget), stopping early at 99% accuracy; evaluated on 256 examples at each length. Run it with
``attnlab run longctx-passkey --db runs/longctx.sqlite --workers 2 --threads 1``.
"""

from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.train.config import TrainConfig

LENGTH, DIGITS, BLOCK = 64, 5, 8
PASSKEY = {"name": "passkey", "length": LENGTH, "digits": DIGITS}
TRAIN = TrainConfig(
    steps=800, batch_size=64, eval_every=100, eval_examples=256, target_accuracy=0.99, extrapolate=[2, 4, 8]
)
MODEL = {"n_layers": 2, "n_heads": 4}


def _part(name: str, task: dict, mechanisms: list[dict], position: str) -> Sweep:
    return Sweep(
        name=name,
        tasks=[task],
        mechanisms=mechanisms,
        positions=[position],
        widths=[64],
        lrs=[2e-3],
        model=MODEL,
        train=TRAIN,
    )


SWEEP = Suite(
    name="longctx-passkey",
    parts=[
        _part(
            "passkey",
            PASSKEY,
            [
                {"normaliser": "softmax"},
                {"normaliser": "softmax", "heads": "cca", "heads_args": {"group": 4, "window": 16}},
            ],
            "rope",
        ),
        _part("passkey-ntk", PASSKEY, [{"normaliser": "softmax"}], "rope_ntk_dynamic"),
        _part(
            "passkey-landmarks",
            {"name": "landmarks", "task": PASSKEY, "block": BLOCK},
            [{"normaliser": "softmax"}, {"normaliser": "softmax", "heads": "landmark", "heads_args": {"block": BLOCK}}],
            "rope",
        ),
    ],
)
