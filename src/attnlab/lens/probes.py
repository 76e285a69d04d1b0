"""Probes of a model while it trains: per layer, the quantities that show instabilities and the formation of heads.

Measured at each evaluation on a fixed probe batch (no gradients), each value one curve point named
``probe/{quantity}/L{layer}`` (or ``probe/{quantity}`` for the model as a whole):

- ``max_logit``: the largest |attention logit| (scaled q·k plus any score bias) of the layer — the quantity whose
  growth at high learning rates Wortsman et al. ("Small-scale proxies for large-scale Transformer training
  instabilities", arXiv:2309.14322, §3.1) show precedes loss divergence, and that qk-norm bounds;
- ``entropy``: mean attention entropy of the layer's heads (nats; ``metrics.attention_entropy``), whose collapse
  is the same paper's (and Zhai et al. 2023's, arXiv:2303.06296) symptom;
- ``sink_rate``: the share of the layer's heads with a first-token sink, α₀ > 0.3 (Gu et al., "When Attention Sink
  Emerges in Language Models", arXiv:2410.10781; ``metrics.sink_rate``), to see sinks emerge during training;
- ``induction``: the layer's best head's induction score on ``[BOS] + x + x`` (Olsson et al., arXiv:2209.11895;
  ``metrics.induction_score``), to see induction heads form and in which layers first;
- ``resid_max_abs`` / ``resid_kurtosis`` and ``attn_out_max_abs`` / ``attn_out_kurtosis``: activation outliers
  of the residual stream after the block and of the attention output (Bondarenko et al., arXiv:2306.12929;
  ``outliers``);
- ``probe/logit_max_abs`` and ``probe/log_z``: the output logits' largest magnitude and their mean log-partition
  log Z, whose drift z-loss removes (Wortsman et al. §3.2).

Attention logits and patterns are read through ``hook_attn_scores`` and ``hook_pattern``, so the probe pass takes
the dense path; a mechanism that has no weights there (kernel attention) gives no such curve rather than a made-up
one. The probe batch is part of the run's identity only through its seed: the same run probes the same tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.hook_points import capture, hook_points
from attnlab.lens.copy_task import copy_layout
from attnlab.lens.metrics import attention_entropy, induction_score, sink_rate
from attnlab.lens.outliers import kurtosis

LAYER = re.compile(r"blocks\.(\d+)\.")
WATCHED = ("attn.hook_attn_scores", "attn.hook_pattern", "hook_resid_post", "hook_attn_out")


@dataclass(frozen=True)
class ProbeInputs:
    """What a run is probed on: a slice of its task's data, and the copying probe for induction (None when the
    vocabulary or length cannot hold one); ``causal`` decides how sinks are counted."""

    data: Tensor  # [B, T] token ids
    induction: Tensor | None  # [B, 2n + 1]: [BOS] + x + x
    seq_half: int
    causal: bool = True
    source: Tensor | None = None  # an encoder-decoder's source tokens for ``data``

    @staticmethod
    def build(
        data: Tensor,
        vocab: int,
        max_len: int,
        seed: int,
        causal: bool = True,
        source: Tensor | None = None,
        n: int = 4,
    ) -> ProbeInputs:
        """``data`` (the first rows of an evaluation batch, with its ``source`` for an encoder-decoder) and ``n``
        copying sequences of half-length up to 16 over ids 1 … vocab − 1 (0 serves as BOS), drawn from ``seed``;
        none for an encoder-decoder (its decoder reads a source) or a vocabulary or length too small."""
        half = min(16, (max_len - 1) // 2)
        induction = None
        if half >= 2 and vocab >= 3 and source is None:
            x = torch.randint(1, vocab, (n, half), generator=torch.Generator().manual_seed(seed))
            induction = copy_layout(x, bos=0)
        return ProbeInputs(data, induction, half, causal, source)


def _layer(name: str) -> int:
    match = LAYER.match(name)
    return int(match.group(1)) if match else -1


def _watched(model: nn.Module) -> list[str]:
    return [n for n in hook_points(model) if n.startswith("blocks.") and n.endswith(WATCHED)]


@torch.no_grad()
def training_probes(model: nn.Module, inputs: ProbeInputs) -> dict[str, float]:
    """Every probe of the module docstring on ``inputs`` (moved to the model's device); the model's training mode
    is restored afterwards."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        out = _data_probes(model, inputs, device)
        if inputs.induction is not None:
            out |= _induction_probes(model, inputs.induction.to(device), inputs.seq_half)
    finally:
        model.train(was_training)
    return out


def _data_probes(model: nn.Module, inputs: ProbeInputs, device: torch.device) -> dict[str, float]:
    data = inputs.data.to(device)
    with capture(model, _watched(model)) as cache:
        logits = model(data) if inputs.source is None else model(data, source=inputs.source.to(device))
    out: dict[str, float] = {
        "probe/logit_max_abs": float(logits.abs().max()),
        "probe/log_z": float(torch.logsumexp(logits.float(), dim=-1).mean()),
    }
    for name, value in sorted(cache.items(), key=lambda item: (_layer(item[0]), item[0])):
        layer = _layer(name)
        if name.endswith("hook_attn_scores"):
            finite = value[torch.isfinite(value)]  # masked scores are −inf
            out[f"probe/max_logit/L{layer}"] = float(finite.abs().max()) if finite.numel() else math.nan
        elif name.endswith("hook_pattern"):
            out[f"probe/entropy/L{layer}"] = float(attention_entropy(value).mean())
            out[f"probe/sink_rate/L{layer}"] = float(sink_rate(value, causal=inputs.causal))
        else:
            kind = "resid" if name.endswith("hook_resid_post") else "attn_out"
            out[f"probe/{kind}_max_abs/L{layer}"] = float(value.abs().max())
            out[f"probe/{kind}_kurtosis/L{layer}"] = float(kurtosis(value))
    return out


def _induction_probes(model: nn.Module, tokens: Tensor, seq_half: int) -> dict[str, float]:
    names = [n for n in _watched(model) if n.endswith("hook_pattern")]
    with capture(model, names) as cache:
        model(tokens)
    return {
        f"probe/induction/L{_layer(name)}": float(induction_score(value, seq_half).max())
        for name, value in sorted(cache.items(), key=lambda item: _layer(item[0]))
    }
