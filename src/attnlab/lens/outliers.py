"""Activation outliers: the largest magnitude and the kurtosis of the residual stream and of attention outputs.

"Quantizable Transformers: Removing Outliers by Helping Attention Heads Do Nothing" (Bondarenko et al. 2023,
arXiv:2306.12929, §2 and Table 2) traces the outliers that break 8-bit activation quantisation to heads that learn
to do nothing (attend to a delimiter with a near-zero value) and measures them by the infinity norm and the
kurtosis of each layer's output: a Gaussian has kurtosis 3; outlier-laden activations reach hundreds or thousands.

Pure functions over captured activations (``run_with_cache`` at ``outlier_names(model)``), so a trained run, a
pretrained model or a model mid-training (the training probes) are measured alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from attnlab.hook_points import hook_points


def kurtosis(x: Tensor) -> Tensor:
    """The (Pearson) kurtosis E[(x − μ)⁴] / σ⁴ of all the values of ``x``, computed in float64: 3 for a Gaussian,
    1.8 for a uniform distribution, large when a few values are far from the rest; NaN for a constant tensor."""
    values = x.detach().double().flatten()
    centred = values - values.mean()
    variance = centred.square().mean()
    return centred.pow(4).mean() / variance.square()


def outlier_names(model: nn.Module) -> list[str]:
    """The hook points ``activation_outliers`` reads that ``model`` has: every block's ``hook_resid_post`` and
    ``hook_attn_out``."""
    points = hook_points(model)
    names = [n for n in points if n.endswith(".hook_resid_post") or n.endswith(".hook_attn_out")]
    return sorted(names, key=lambda n: (int(n.split(".")[1]), n))


def activation_outliers(cache: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """``{hook name: {"max_abs": max |x|, "kurtosis": kurtosis(x)}}`` for every tensor of ``cache``."""
    return {
        name: {"max_abs": float(value.detach().abs().max()), "kurtosis": float(kurtosis(value))}
        for name, value in cache.items()
    }


def outlier_summary(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per kind of activation (``resid_post``, ``attn_out``): the largest max |x| and the largest kurtosis over
    layers, as ``{"resid_post_max_abs": …, "resid_post_kurtosis": …, …}``."""
    out: dict[str, float] = {}
    for name, values in stats.items():
        kind = name.rsplit(".hook_", 1)[-1]
        for key, value in values.items():
            label = f"{kind}_{key}"
            out[label] = max(out.get(label, -torch.inf), value)
    return out
