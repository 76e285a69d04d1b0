"""The standard suite: every bench task at CPU scale, for the mechanisms the mission names.

Six normalisers (softmax, sigmoid, Cog, softplus-based LSSA, elu+1 linear attention, Based) on nine tasks
covering the four attention patterns of CAB: causal self-attention (MQAR, copying, induction, selective
copying, passkey, language modelling on the Python standard library, byte-level and BPE), non-causal
self-attention (sorting, an encoder) and cross-attention (reversal, an encoder-decoder). Passkey and the
byte-level language model are trained at length L and evaluated at 2L, 4L and 8L, with RoPE and with
dynamic NTK scaling (a RoPE-scaling method that changes nothing up to L, so its runs differ from RoPE's only
beyond it). Mechanisms that cannot serve a task (Based has no cross-attention) sit it out; ``attnlab run``
prints which.

Each part has its own training budget; every run uses one learning rate (2e-3), and every model has 2 layers,
4 heads and width 64. For a learning-rate sweep copy this file and set ``LRS``. Run it with
``attnlab run standard --db runs/standard.sqlite --report runs/standard`` (resumable).
"""

from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.train.config import TrainConfig

MECHANISMS = [
    {"normaliser": "softmax"},
    {"normaliser": "sigmoid"},
    {"normaliser": "cog"},
    {"normaliser": "lssa"},
    {"normaliser": "linear_elu"},
    {"normaliser": "based"},
]
MODEL = {"n_layers": 2, "n_heads": 4}
LRS = [2e-3]  # one learning rate for every part: the suite has to fit a working session on 2 cores


def _part(
    name: str, tasks: list[dict], train: TrainConfig, positions: list[str], lrs: list[float] = LRS, **model: object
) -> Sweep:
    return Sweep(
        name=name,
        tasks=tasks,
        mechanisms=MECHANISMS,
        positions=positions,
        widths=[64],
        lrs=lrs,
        seeds=[0],
        model={**MODEL, **model},
        train=train,
        skip_unsupported=True,
    )


SYNTHETIC = TrainConfig(steps=1200, batch_size=64, eval_every=100, eval_examples=512, target_accuracy=0.99)
EXTRAPOLATE = SYNTHETIC.model_copy(update={"steps": 800, "extrapolate": [2.0, 4.0, 8.0]})
SHORT = SYNTHETIC.model_copy(update={"steps": 800})
LM = TrainConfig(steps=400, batch_size=16, eval_every=100, eval_examples=64, extrapolate=[2.0, 4.0, 8.0])


SWEEP = Suite(
    name="standard",
    parts=[
        _part(
            "synthetic",
            [
                {"name": "mqar", "vocab": 64, "length": 32, "num_kv_pairs": 4},
                {"name": "copying", "vocab": 32, "span": 8, "length": 32},
                {"name": "induction", "vocab": 64, "half": 16},
                {"name": "selective_copy", "vocab": 16, "length": 64, "n_memorize": 8},
            ],
            SYNTHETIC,
            ["rope"],
            mlp=False,
        ),
        _part("passkey", [{"name": "passkey", "length": 64, "digits": 5}], EXTRAPOLATE, ["rope", "rope_ntk_dynamic"]),
        _part(
            "lm",
            [
                {"name": "lm", "corpus": "stdlib", "tokenizer": "byte", "length": 128},
            ],
            LM,
            ["rope", "rope_ntk_dynamic"],
        ),
        _part("lm-bpe", [{"name": "lm", "corpus": "stdlib", "tokenizer": "bpe", "length": 64}], LM, ["rope"]),
        _part("sorting", [{"name": "sorting"}], SHORT, ["rope"]),
        _part("reversal", [{"name": "reversal"}], SHORT, ["rope"]),
    ],
)
