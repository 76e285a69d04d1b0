"""Direct logit attribution of every head, MLP and embedding, and the logit lens per layer.

Direct logit attribution (DLA; Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et
al. 2023, "Interpretability in the Wild", arXiv:2211.00593, §3): a component c that writes r_c into the
residual stream moves the logit difference between a correct token and a wrong one by::

    DLA_c = u · frozen_norm(r_c, σ)        u = W_U[correct] − W_U[wrong],   σ = the final norm's divisor

with σ frozen from the run itself (``attnlab.lens.residual``), so the attributions sum exactly to the logit
difference minus the bias terms, which are returned separately::

    logit_diff = Σ_heads + Σ_output_biases + Σ_MLPs + embed + pos_embed + bias + rest

``bias`` is u · b_norm plus b_U[correct] − b_U[wrong]; ``rest`` is the attribution of whatever the listed
components do not explain (0 up to rounding for ``TransformerLM`` and ``LlamaLM``: a non-zero value means the
model writes to its residual stream through something the decomposition does not name).

The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens", LessWrong; TransformerLens's
``accumulated_resid`` + ``apply_ln_to_stack``) unembeds the residual stream before every layer and after the
last one, through the final norm recomputed at each layer (or, with ``frozen=True``, with the final σ: then layer
l's value is the running sum of the attributions of everything before layer l).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.hook_points import hook_points
from attnlab.lens.residual import (
    at_position,
    final_norm,
    final_resid_name,
    frozen_norm,
    head_results,
    n_layers,
    norm_bias,
    norm_scale,
    output_bias,
    require,
    resid_pre_name,
    unembed_bias,
    unembed_weight,
    z_name,
)


@dataclass(frozen=True)
class Attribution:
    """Direct logit attributions, one value per sample (the batch axis first)."""

    heads: Tensor  # [B, L, H]: each head's result z_h W_O^h
    attn_bias: Tensor  # [B, L]: each layer's output-projection bias (0 without one)
    mlps: Tensor  # [B, L]: each MLP's output (0 for a layer without an MLP)
    embed: Tensor  # [B]: the token embedding
    pos_embed: Tensor  # [B]: the absolute position embedding (0 without one)
    bias: Tensor  # [B]: u · b_norm + b_U[correct] − b_U[wrong]
    rest: Tensor  # [B]: what the components above leave unexplained (0 up to rounding)

    def total(self) -> Tensor:
        """The sum of every term, [B]: the logit difference of the run the cache came from."""
        per_field = (getattr(self, f.name).reshape(*self.embed.shape, -1).sum(-1) for f in fields(self))
        return sum(per_field, torch.zeros_like(self.embed))

    def mean(self) -> Attribution:
        """Every field averaged over the batch (the batch axis removed)."""
        return Attribution(**{f.name: getattr(self, f.name).mean(0) for f in fields(self)})


def attribution_names(model: nn.Module) -> list[str]:
    """The hook points ``direct_logit_attribution`` and the logit lens read, those of them ``model`` has (a run
    records only those that fire: no ``hook_pos_embed`` without absolute positions, no ``hook_mlp_out`` without
    MLPs)."""
    layers = range(n_layers(model))
    names = ["hook_embed", "hook_pos_embed", final_resid_name(model)]
    names += [z_name(layer) for layer in layers] + [f"blocks.{layer}.hook_mlp_out" for layer in layers]
    points = hook_points(model)
    return [name for name in names + [resid_pre_name(layer) for layer in layers] if name in points]


def logit_direction(model: nn.Module, correct: Tensor, wrong: Tensor | None = None) -> Tensor:
    """u = W_U[correct] − W_U[wrong] (or W_U[correct] alone), [B, D]; ``correct``, ``wrong``: [B] token ids."""
    w_u = unembed_weight(model)
    u = w_u[correct]
    return u if wrong is None else u - w_u[wrong]


def _unembed_offset(model: nn.Module, correct: Tensor, wrong: Tensor | None, like: Tensor) -> Tensor:
    """b_U[correct] − b_U[wrong] (or b_U[correct]), [B]."""
    b_u = unembed_bias(model, like)
    return b_u[correct] if wrong is None else b_u[correct] - b_u[wrong]


def check_tokens(correct: Tensor, wrong: Tensor | None, batch: int) -> None:
    """ConfigError unless ``correct`` (and ``wrong``) are [batch] integer token ids."""
    for field, t in (("correct", correct), ("wrong", wrong)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != batch or t.is_floating_point():
            raise ConfigError(field, tuple(t.shape), f"needs one integer token id per sample, shape [{batch}]")


@torch.no_grad()
def direct_logit_attribution(
    model: nn.Module,
    cache: Mapping[str, Tensor],
    correct: Tensor,
    wrong: Tensor | None = None,
    position: int | Tensor = -1,
) -> Attribution:
    """The DLA of every head, output bias, MLP and embedding at ``position`` (an int or one per sample, [B]).

    ``cache`` holds the run's activations at ``attribution_names(model)``; ``correct`` / ``wrong`` are [B] token
    ids (``wrong=None``: attributions of the correct logit itself). See the module docstring for the identity the
    terms satisfy.
    """
    norm = final_norm(model)
    x_final = at_position(require(cache, final_resid_name(model)), position, 1)  # [B, D]
    check_tokens(correct, wrong, x_final.shape[0])
    correct = correct.to(x_final.device)
    wrong = None if wrong is None else wrong.to(x_final.device)
    u = logit_direction(model, correct, wrong).to(x_final.dtype)  # [B, D]
    scale = norm_scale(norm, x_final)  # [B, 1], frozen from this run

    def dla(r: Tensor) -> Tensor:  # r [B, ..., D] → [B, ...]
        s = scale.view(scale.shape[0], *[1] * (r.dim() - 1))
        return (frozen_norm(norm, r, s) * u.view(u.shape[0], *[1] * (r.dim() - 2), -1)).sum(-1)

    explained = torch.zeros_like(x_final)
    heads, attn_bias, mlps = [], [], []
    for layer in range(n_layers(model)):
        results = head_results(model, layer, at_position(require(cache, z_name(layer)), position, 2))  # [B, H, D]
        b_o = output_bias(model, layer, x_final).expand_as(x_final)
        mlp_name = f"blocks.{layer}.hook_mlp_out"
        if getattr(model.blocks[layer], "mlp", None) is not None:
            mlp = at_position(require(cache, mlp_name), position, 1)
        else:
            mlp = torch.zeros_like(x_final)
        heads.append(dla(results))
        attn_bias.append(dla(b_o))
        mlps.append(dla(mlp))
        explained = explained + results.sum(1) + b_o + mlp
    embed = at_position(require(cache, "hook_embed"), position, 1)
    pos = cache.get("hook_pos_embed")  # [T, D]: absolute positions only
    pos_embed = torch.zeros_like(x_final) if pos is None else pos[position].to(x_final.dtype).expand_as(x_final)
    explained = explained + embed + pos_embed
    return Attribution(
        heads=torch.stack(heads, 1),
        attn_bias=torch.stack(attn_bias, 1),
        mlps=torch.stack(mlps, 1),
        embed=dla(embed),
        pos_embed=dla(pos_embed),
        bias=u @ norm_bias(norm, u) + _unembed_offset(model, correct, wrong, u),
        rest=dla(x_final - explained),
    )


def residual_stack(model: nn.Module, cache: Mapping[str, Tensor], position: int | Tensor = -1) -> Tensor:
    """The residual stream before each layer and after the last, at ``position``: [L + 1, B, D]."""
    names = [resid_pre_name(layer) for layer in range(n_layers(model))] + [final_resid_name(model)]
    return torch.stack([at_position(require(cache, name), position, 1) for name in names])


def _normed_stack(model: nn.Module, cache: Mapping[str, Tensor], position: int | Tensor, frozen: bool) -> Tensor:
    """The final norm applied to every entry of ``residual_stack``: [L + 1, B, D]."""
    norm = final_norm(model)
    stack = residual_stack(model, cache, position)
    scale = norm_scale(norm, stack[-1] if frozen else stack)  # frozen: the final residual's σ for every layer
    return frozen_norm(norm, stack, scale) + norm_bias(norm, stack)


@torch.no_grad()
def logit_lens(
    model: nn.Module, cache: Mapping[str, Tensor], position: int | Tensor = -1, frozen: bool = False
) -> Tensor:
    """Logits read off the residual stream before every layer and after the last: [L + 1, B, V].

    Entry L (after the last layer) equals the model's logits at ``position``. ``cache`` needs every
    ``blocks.{l}.hook_resid_pre`` and the last ``hook_resid_post`` (``attribution_names`` lists them).
    """
    normed = _normed_stack(model, cache, position, frozen)
    return normed @ unembed_weight(model).to(normed.dtype).T + unembed_bias(model, normed)


@torch.no_grad()
def logit_lens_diff(
    model: nn.Module,
    cache: Mapping[str, Tensor],
    correct: Tensor,
    wrong: Tensor | None = None,
    position: int | Tensor = -1,
    frozen: bool = False,
) -> Tensor:
    """The logit difference (correct − wrong) the logit lens reads at each layer: [L + 1, B].

    Computed along u = W_U[correct] − W_U[wrong] without forming the [L + 1, B, V] logits.
    """
    normed = _normed_stack(model, cache, position, frozen)  # [L + 1, B, D]
    check_tokens(correct, wrong, normed.shape[1])
    correct = correct.to(normed.device)
    wrong = None if wrong is None else wrong.to(normed.device)
    u = logit_direction(model, correct, wrong).to(normed.dtype)  # [B, D]
    return (normed * u).sum(-1) + _unembed_offset(model, correct, wrong, normed)
