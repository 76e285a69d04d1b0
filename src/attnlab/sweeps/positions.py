"""Positions and masks on the bench: digit formats and length generalisation in arithmetic, MEAP on retrieval, and
CAB's causal cross-attention, each over five seeds, so every comparison has a 95% interval and a paired test.

Every run: softmax attention with RoPE, 2 layers, 4 heads, width 64, learning rate 1e-3, seeds 0 … 4, batches of 64,
evaluated on 512 held-out examples, no early stop (the two arms of a comparison train the same steps). Seven parts,
one database, one report:

- ``arithmetic`` (4000 steps): addition of 3-digit operands and multiplication of 2-digit operands, each in the
  three formats of Shen et al., "Positional Description Matters for Transformers Arithmetic" (2023,
  arXiv:2311.14737) and Zhou et al., "Transformers Can Achieve Length Generalization But Not Robustly" (2024,
  arXiv:2402.09371): plain, reversed, and reversed with index hints. Each is evaluated at the training length and
  at 2× (``train.extrapolate``: the longest operands that fit twice the positions: 7 digits for plain and
  reversed addition, 6 with index hints, which take two tokens a digit; 4 for multiplication), by the per-digit
  ``accuracy`` and by ``exact_match``, the fraction of answers with every digit right (the papers' metric;
  ``TaskConfig.sequence_metric``). Formats are task variants (``addition[format=reversed]``); the report's
  length-extrapolation table gives the four metrics with their intervals.
- ``meap-off-*`` / ``meap-on-*``: MQAR (Arora et al. 2023, arXiv:2312.04927; vocabulary 64, length 32, 4 pairs,
  attention-only as in the ``quick`` and ``standard`` presets, 1000 steps evaluated every 50, so the leaderboard's
  "emerged at" step is resolved) and passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300; length 64, 5
  digits, 1000 steps, evaluated every 100) trained with plain next-token prediction and with MEAP (Zhuang et al.,
  "Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More", 2025, arXiv:2502.07490): 15% of each
  training sequence's input tokens replaced by a mask token, evaluation unmasked (``mask_ratio = 0.15`` in the
  authors' pre-training script, github.com/scitix/MEAP, ``MEAP-Pretain/pretrained/meap_1b.py``). The arms of a seed
  see the same examples; the mask token is one more embedding row, so their initial weights differ. The leaderboard
  names the arms by the fields that differ (``train.meap_mask_fraction``, and the model's vocabulary, one larger
  under MEAP) and tests them against each other (``vs best``, paired over seeds).
- ``causal-cross-off`` / ``causal-cross-on`` (1000 steps): running sums mod 10 over 16 tokens, target i reading
  source positions up to i − delay for delays 0 and 3 (``prefix_sum``), the task for CAB's fourth attention
  pattern, causal cross-attention (Zhang et al., "CAB: Comprehensive Attention Benchmarking on Long Sequence
  Modeling", 2023, arXiv:2210.07661), in an encoder-decoder with full cross-attention over a bidirectional encoder
  (off) and with causal cross-attention over a causal encoder (``model.causal_cross``, on); evaluated at the
  training length and at 2×.

The budgets were sized from timed pilots to about 30–45 minutes of wall clock on 2 idle cores:
``nice -n 5 python bench/preset_time.py positions --steps 150 --workers 2`` (CPU time of each configuration's steps
and evaluations) printed "total 4434 CPU s; on 2 workers about 37.0 min" with the machine's 2 cores loaded by other
jobs (load average 5–6.6), which makes each step dearer, plus a few seconds a run the pilot leaves out. Run it as

    attnlab run positions --db runs/positions.sqlite --report runs/positions --workers 2 --threads 1

(resumable; the command prints the wall time over all its sittings). The paired difference of two arms on any
metric, with its interval and p-value: ``attnlab compare runs/positions.sqlite A B --metric accuracy@2x``, A and B
named as in the leaderboard.
"""

from attnlab.runner.config import Sweep
from attnlab.runner.suite import Suite
from attnlab.tasks.addition import AdditionConfig
from attnlab.tasks.arithmetic import FORMATS
from attnlab.tasks.mqar import MQARConfig
from attnlab.tasks.multiplication import MultiplicationConfig
from attnlab.tasks.passkey import PasskeyConfig
from attnlab.tasks.prefix_sum import PrefixSumConfig
from attnlab.train.config import TrainConfig

SEEDS = [0, 1, 2, 3, 4]
LR = 1e-3
MODEL = {"n_layers": 2, "n_heads": 4}
MEAP_FRACTION = 0.15  # the authors' pre-training mask_ratio (MEAP-Pretain/pretrained/meap_1b.py)
ARITHMETIC_FORMATS = [f for f in FORMATS if f != "plain_index_hints"]  # plain, reversed, index_hints
DELAYS = (0, 3)  # prefix_sum: target i reads source positions up to i − delay

ARITHMETIC = TrainConfig(steps=4000, batch_size=64, eval_every=500, eval_examples=512, extrapolate=[2.0])
MQAR = TrainConfig(steps=1000, batch_size=64, eval_every=50, eval_examples=512)
PASSKEY = TrainConfig(steps=1000, batch_size=64, eval_every=100, eval_examples=512)
CAUSAL_CROSS = TrainConfig(steps=1000, batch_size=64, eval_every=100, eval_examples=512, extrapolate=[2.0])


def _part(name: str, tasks: list, train: TrainConfig, **model: object) -> Sweep:
    return Sweep(
        name=name,
        tasks=tasks,
        mechanisms=[{"normaliser": "softmax"}],
        positions=["rope"],
        widths=[64],
        lrs=[LR],
        seeds=SEEDS,
        model={**MODEL, **model},
        train=train,
    )


def _meap(train: TrainConfig) -> TrainConfig:
    return train.model_copy(update={"meap_mask_fraction": MEAP_FRACTION})


MQAR_TASK = MQARConfig(vocab=64, length=32, num_kv_pairs=4)
PASSKEY_TASK = PasskeyConfig(length=64, digits=5)
PREFIX_SUMS = [PrefixSumConfig(modulus=10, length=16, delay=delay) for delay in DELAYS]

SWEEP = Suite(
    name="positions",
    parts=[
        _part(
            "arithmetic",
            [AdditionConfig(digits=3, format=f) for f in ARITHMETIC_FORMATS]
            + [MultiplicationConfig(digits=2, format=f) for f in ARITHMETIC_FORMATS],
            ARITHMETIC,
        ),
        _part("meap-off-mqar", [MQAR_TASK], MQAR, mlp=False),
        _part("meap-on-mqar", [MQAR_TASK], _meap(MQAR), mlp=False),
        _part("meap-off-passkey", [PASSKEY_TASK], PASSKEY),
        _part("meap-on-passkey", [PASSKEY_TASK], _meap(PASSKEY)),
        _part("causal-cross-off", PREFIX_SUMS, CAUSAL_CROSS),
        _part("causal-cross-on", PREFIX_SUMS, CAUSAL_CROSS, causal_cross=True),
    ],
)
