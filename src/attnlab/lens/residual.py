"""The residual stream as a sum of what each component wrote, and the final norm with its scale frozen.

A pre-norm decoder (``TransformerLM``, SmolLM2's ``LlamaLM``) builds its last hidden state as a sum::

    x_final = embed + pos_embed + Σ_L ( Σ_h result_{L,h} + b_O^L ) + Σ_L mlp_out_L

where ``result_{L,h} = z_{L,h} W_O^{L,h}`` is head h's share of the output projection (TransformerLens's
``hook_result``; Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"). The final norm is not
linear, but with its divisor σ(x_final) frozen it is: LayerNorm becomes ``(x − mean x) / σ · w + b`` and RMSNorm
``x / σ · w``, so the logits split exactly into one term per component plus the norm's bias (the direct logit
attribution of TransformerLens's ``ActivationCache.decompose_resid`` / ``apply_ln_to_stack``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from attnlab.attention.heads.base import MultiHead
from attnlab.errors import ConfigError


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def resid_pre_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def require(cache: Mapping[str, Tensor], name: str) -> Tensor:
    """``cache[name]``, or a KeyError saying which activation to record."""
    if name not in cache:
        raise KeyError(f"the cache lacks {name!r}: record it with run_with_cache(model, tokens, names)")
    return cache[name]


def n_layers(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ConfigError("model", type(model).__name__, "has no `blocks` list of decoder layers")
    return len(blocks)


def forward_from(model: nn.Module, layer: int, resid_pre: Tensor) -> Tensor:
    """The logits [B, T, V] of a run resumed at ``layer`` from its residual stream ``resid_pre`` [B, T, D]: the blocks
    from ``layer`` on, the final norm and the unembedding (the rest of ``TransformerLM.forward`` and
    ``LlamaLM.forward``). Hook points in those blocks fire as in a full run, ``blocks.{layer}.hook_resid_pre``
    included; patching at layer l and above need not recompute the layers below it."""
    return model.unembed(final_norm(model)(run_blocks(model, layer, n_layers(model), resid_pre)))


def run_blocks(model: nn.Module, start: int, stop: int, resid_pre: Tensor) -> Tensor:
    """The residual stream after blocks ``start .. stop − 1`` run on ``resid_pre`` [B, T, D] (the input of block
    ``start``); their hook points fire as in a full run."""
    x = resid_pre
    for index in range(start, stop):
        x = model.blocks[index](x, None, index)
    return x


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def block_of(name: str) -> int | None:
    """The layer a hook point sits in (``blocks.{L}.…``), or None outside the blocks (``hook_embed``)."""
    m = _BLOCK.match(name)
    return None if m is None else int(m.group(1))


def final_resid_name(model: nn.Module) -> str:
    """The hook holding the input of the final norm: ``blocks.{L−1}.hook_resid_post``."""
    return f"blocks.{n_layers(model) - 1}.hook_resid_post"


def output_projection(model: nn.Module, layer: int) -> nn.Linear:
    """Layer ``layer``'s output projection W_O, for heads whose output is ``o_proj(concat_h z_h)``.

    Other head modules (gated, differential, latent ...) combine z otherwise, so a head's share of the output
    is not one slice of one matrix; they are refused rather than approximated.
    """
    heads = model.blocks[layer].attn.heads
    if not isinstance(heads, MultiHead) or type(heads).combine is not MultiHead.combine:
        raise ConfigError(
            f"blocks.{layer}.attn.heads",
            type(heads).__name__,
            "per-head outputs need heads combined as o_proj(concat z)",
            ["mha", "gqa", "mqa"],
        )
    return heads.o_proj


def head_results(model: nn.Module, layer: int, z: Tensor) -> Tensor:
    """Each head's write to the residual stream, without the output bias: z [..., H, d] → [..., H, D].

    ``result_h = z_h · W_O[:, h·d:(h+1)·d]ᵀ``; summed over h and plus ``o_proj.bias`` it is the layer's
    ``hook_attn_out``. (``hook_z`` is [B, H, T, d]: move the head axis next to d first.)
    """
    o_proj = output_projection(model, layer)
    n_heads, d_head = z.shape[-2:]
    w_o = o_proj.weight.view(o_proj.weight.shape[0], n_heads, d_head)  # [D, H·d] → [D, H, d]
    return torch.einsum("...hd,mhd->...hm", z, w_o.to(z.dtype))


def output_bias(model: nn.Module, layer: int, like: Tensor) -> Tensor:
    """``o_proj.bias`` of layer ``layer`` [D] (zeros when the projection has none)."""
    o_proj = output_projection(model, layer)
    if o_proj.bias is None:
        return torch.zeros(o_proj.weight.shape[0], dtype=like.dtype, device=like.device)
    return o_proj.bias.to(like.dtype)


def final_norm(model: nn.Module) -> nn.LayerNorm | nn.RMSNorm:
    norm = getattr(model, "ln_f", None)
    if not isinstance(norm, nn.LayerNorm | nn.RMSNorm):
        raise ConfigError("model.ln_f", type(norm).__name__, "is not a final norm", ["LayerNorm", "RMSNorm"])
    return norm


def norm_scale(norm: nn.LayerNorm | nn.RMSNorm, x: Tensor) -> Tensor:
    """The divisor σ the norm applies to x [..., D], as [..., 1]: ``sqrt(var x + ε)`` (LayerNorm, biased variance)
    or ``sqrt(mean x² + ε)`` (RMSNorm; ε = None means the dtype's machine epsilon, as ``nn.RMSNorm`` does)."""
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    if isinstance(norm, nn.LayerNorm):
        return (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def frozen_norm(norm: nn.LayerNorm | nn.RMSNorm, x: Tensor, scale: Tensor) -> Tensor:
    """The norm's linear part with σ frozen: ``(x − mean x) / σ · w`` (LayerNorm) or ``x / σ · w`` (RMSNorm).

    Linear in x, so it distributes over the components of the residual stream; the norm of the whole stream is
    ``frozen_norm(x, norm_scale(x)) + norm_bias``.
    """
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    y = x / scale
    return y if norm.weight is None else y * norm.weight.to(x.dtype)


def norm_bias(norm: nn.LayerNorm | nn.RMSNorm, like: Tensor) -> Tensor:
    """The norm's additive bias [D] (LayerNorm's ``bias``; zeros for RMSNorm or a bias-free LayerNorm)."""
    bias = getattr(norm, "bias", None)
    if bias is None:
        return torch.zeros(like.shape[-1], dtype=like.dtype, device=like.device)
    return bias.to(like.dtype)


def unembed_weight(model: nn.Module) -> Tensor:
    """W_U [V, D] (``model.unembed.weight``)."""
    unembed = getattr(model, "unembed", None)
    if not isinstance(unembed, nn.Linear):
        raise ConfigError("model.unembed", type(unembed).__name__, "is not a linear unembedding", ["nn.Linear"])
    return unembed.weight


def unembed_bias(model: nn.Module, like: Tensor) -> Tensor:
    """b_U [V] (zeros when the unembedding has none)."""
    weight, bias = unembed_weight(model), model.unembed.bias
    if bias is None:
        return torch.zeros(weight.shape[0], dtype=like.dtype, device=like.device)
    return bias.to(like.dtype)


def at_position(x: Tensor, position: int | Tensor, time_axis: int) -> Tensor:
    """x at one time step per sample: ``position`` an int (all samples) or a [B] tensor (one per sample, e.g. the
    last real token of right-padded prompts). The time axis is removed; the batch axis is axis 0."""
    if isinstance(position, int):
        return x.select(time_axis, position)
    if position.dim() != 1 or position.shape[0] != x.shape[0]:
        raise ConfigError("position", tuple(position.shape), f"needs one position per sample ({x.shape[0]})")
    index_shape = [x.shape[0]] + [1] * (x.dim() - 1)
    index = position.to(x.device).view(index_shape).expand(*x.shape[:time_axis], 1, *x.shape[time_axis + 1 :])
    return x.gather(time_axis, index).squeeze(time_axis)
