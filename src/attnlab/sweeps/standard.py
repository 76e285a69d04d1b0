"""The standard suite: every bench task at CPU scale, for the mechanisms the mission names, with three seeds and a
learning-rate search.

Six normalisers (softmax, sigmoid, Cog, softplus-based LSSA, elu+1 linear attention, Based) on nine tasks
covering the four attention patterns of CAB: causal self-attention (MQAR, copying, induction, selective
copying, passkey, language modelling on the Python standard library, byte-level and BPE), non-causal
self-attention (sorting, an encoder) and cross-attention (reversal, an encoder-decoder). Mechanisms that cannot
serve a task (Based has no cross-attention) sit it out; ``attnlab run`` prints which.

Every (task, mechanism) searches its learning rate over {1e-3, 3e-3} by successive halving, over seeds 0, 1, 2:
both rates train every seed to a quarter of the part's steps, and the rate with the better mean evaluation loss
continues from those checkpoints to the end (``attnlab.runner.search``). The leaderboards then show the mean
over the three seeds with a 95% interval and flag a best rate at the edge of the grid.

Passkey and the byte-level language model are trained at length L with RoPE and evaluated at 2L, 4L and 8L twice
from the same weights: with RoPE and with dynamic NTK scaling (``train.extrapolate_positions``; a RoPE-scaling
method that changes nothing up to L, so training it separately would repeat the RoPE run).

Every model has 2 layers, 4 heads and width 64. The budgets are sized so that the whole suite fits 4 hours of
wall clock on 2 cores (``attnlab run standard --db runs/standard.sqlite --report runs/standard --workers 2
--threads 1``; resumable, and the command prints the wall time over all its sittings).
"""

from attnlab.runner.config import SearchConfig, Sweep
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
LRS = [1e-3, 3e-3]
SEEDS = [0, 1, 2]


def _part(name: str, tasks: list[dict], train: TrainConfig, **model: object) -> Sweep:
    return Sweep(
        name=name,
        tasks=tasks,
        mechanisms=MECHANISMS,
        positions=["rope"],
        widths=[64],
        seeds=SEEDS,
        search=SearchConfig(lrs=LRS, min_steps=train.steps // 4),
        model={**MODEL, **model},
        train=train,
        skip_unsupported=True,
    )


SYNTHETIC = TrainConfig(steps=1200, batch_size=64, eval_every=100, eval_examples=256, target_accuracy=0.99)
SHORT = SYNTHETIC.model_copy(update={"steps": 800})
EXTRAPOLATE = SHORT.model_copy(update={"extrapolate": [2.0, 4.0, 8.0], "extrapolate_positions": ["rope_ntk_dynamic"]})
LM = TrainConfig(steps=400, batch_size=16, eval_every=100, eval_examples=64)
LM_EXTRAPOLATE = LM.model_copy(update={"extrapolate": [2.0, 4.0, 8.0], "extrapolate_positions": ["rope_ntk_dynamic"]})


SWEEP = Suite(
    name="standard",
    parts=[
        _part(
            "synthetic",
            [
                {"name": "mqar", "vocab": 64, "length": 32, "num_kv_pairs": 4},
                {"name": "copying", "vocab": 32, "span": 8, "length": 32},
                {"name": "induction", "vocab": 64, "half": 16},
            ],
            SYNTHETIC,
            mlp=False,
        ),
        _part(
            "selective-copy", [{"name": "selective_copy", "vocab": 16, "length": 64, "n_memorize": 8}], SHORT, mlp=False
        ),
        _part("passkey", [{"name": "passkey", "length": 64, "digits": 5}], EXTRAPOLATE),
        _part("lm", [{"name": "lm", "corpus": "stdlib", "tokenizer": "byte", "length": 128}], LM_EXTRAPOLATE),
        _part("lm-bpe", [{"name": "lm", "corpus": "stdlib", "tokenizer": "bpe", "length": 64}], LM),
        _part("sorting", [{"name": "sorting"}], SHORT),
        _part("reversal", [{"name": "reversal"}], SHORT),
    ],
)
