"""MEAP: mask a fraction of the input tokens of each training batch, keep the next-token targets.

Zhuang et al., "Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More" (2025,
arXiv:2502.07490): a small fraction of the input tokens is replaced by a mask token and the model is trained with
the ordinary next-token loss on the unchanged targets, in a decoder-only Transformer, at no extra cost; the paper
reports better key-information retrieval (needle in a haystack, multi-document QA), which it attributes to more
distinguishable attention over the tokens left unmasked. Here it is ``TrainConfig.meap_mask_fraction``, on the
training batches only: the evaluation sets are never masked, so a MEAP run is scored on the same examples as a
plain one (MQAR, passkey, …).

Each row of ``inputs`` gets exactly ``round(fraction · T)`` masked positions, drawn uniformly without replacement
from a generator seeded by (seed, step), so a run (and a resumed run) sees the same masks. In an encoder-decoder
task the decoder's input is masked and the source is left as it is.

The mask token is the reserved id ``V`` = the task's ``vocab_size`` (one past its last token), and the model's
vocabulary is ``V + 1`` (``model_vocab``): every task can then use MEAP whatever its vocabulary (MQAR and passkey
use every id they have, and taking one of them would change what the task means), the token is never a target,
and a task's own vocabulary, configs and run ids stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnlab.tasks.base import Batch, hash_seed


def model_vocab(task_vocab: int, fraction: float) -> int:
    """The model's vocabulary for a task of ``task_vocab`` tokens: one more (the mask token) under MEAP."""
    return task_vocab + 1 if fraction > 0 else task_vocab


def mask_inputs(batch: Batch, fraction: float, mask_token: int, generator: torch.Generator) -> Batch:
    """``batch`` with ``round(fraction · T)`` input positions of each row set to ``mask_token``; the targets and
    the source are the same tensors. ``fraction`` 0 returns ``batch`` itself."""
    n, length = batch.inputs.shape
    k = round(fraction * length)
    if k == 0:
        return batch
    chosen = torch.rand(n, length, generator=generator).argsort(dim=1)[:, :k]  # k distinct positions per row
    inputs = batch.inputs.clone()
    inputs.scatter_(1, chosen, mask_token)
    return Batch(inputs, batch.targets, batch.source)


def meap_batches(
    train_batch: Callable[[int, int], Batch], fraction: float, mask_token: int, seed: int
) -> Callable[[int, int], Batch]:
    """``train_batch`` with MEAP's masking (``mask_inputs``), a pure function of (seed, step); ``fraction`` 0
    returns ``train_batch`` itself."""
    if fraction == 0:
        return train_batch

    def masked(step: int, batch_size: int) -> Batch:
        generator = torch.Generator().manual_seed(hash_seed(seed, "meap", step))
        return mask_inputs(train_batch(step, batch_size), fraction, mask_token, generator)

    return masked
