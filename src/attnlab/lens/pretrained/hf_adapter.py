"""Any local Hugging Face transformers checkpoint under the lens: attention patterns per layer through transformers'
own attention interface (``output_attentions=True`` on eager attention), in the structure ``lens.capture`` gives.

``load_hf(path)`` reads a checkpoint *directory* (``config.json`` + weights) with ``local_files_only=True`` and
``attn_implementation="eager"`` (fused kernels return no weights): ``AutoModelForCausalLM`` when the config's
``architectures`` name a causal LM (``...ForCausalLM`` / ``...LMHeadModel``), else ``AutoModel`` (encoders).
``hf_run_with_cache(model, tokens)`` returns ``(output, {"blocks.{L}.attn.hook_pattern": [B, H, Q, K]})`` so
``capture.patterns`` and every metric / ``head_table`` work unchanged; ``hf_patterns`` returns ``{L: pattern}``.

transformers is the optional extra ``hf`` and is imported only inside these functions: ``import attnlab`` never
imports it. Nothing is downloaded (a missing file is an error, not a hub request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError

KINDS = ("auto", "causal_lm", "base")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("loading a transformers checkpoint needs the `hf` extra: pip install 'attnlab[hf]'") from e
    return transformers


def checkpoint_kind(path: str | Path) -> Literal["causal_lm", "base"]:
    """``causal_lm`` if ``config.json``'s ``architectures`` name a causal LM head, else ``base``."""
    config = Path(path) / "config.json"
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("path", str(path), f"no readable config.json ({type(e).__name__})") from None
    return "causal_lm" if any(str(a).endswith(_CAUSAL_SUFFIXES) for a in archs) else "base"


def load_hf(
    path: str | Path, kind: str = "auto", dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> nn.Module:
    """A local transformers checkpoint directory → the model in eval mode, with eager attention.

    ``kind``: ``auto`` (from ``config.json``), ``causal_lm`` (``AutoModelForCausalLM``) or ``base`` (``AutoModel``).
    ``trust_remote_code`` stays False unless asked: it would run Python code shipped with the checkpoint.
    """
    if kind not in KINDS:
        raise ConfigError("kind", kind, "unknown model kind", KINDS)
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("path", str(path), "not a checkpoint directory (config.json and weights)")
    chosen = checkpoint_kind(folder) if kind == "auto" else kind
    transformers = _transformers()
    auto = transformers.AutoModelForCausalLM if chosen == "causal_lm" else transformers.AutoModel
    try:
        model = auto.from_pretrained(
            str(folder),
            local_files_only=True,
            attn_implementation="eager",
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("path", str(path), f"transformers could not load it: {first}") from None
    return model.eval()


@torch.no_grad()
def hf_run_with_cache(
    model: nn.Module, tokens: Tensor, attention_mask: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """tokens [B, T] → (logits [B, T, V] or last hidden state [B, T, D], {``blocks.{L}.attn.hook_pattern``: A}).

    A is transformers' post-softmax attention of layer L, [B, H, T, T] (rows = queries), as the model's eager
    attention computes it; with ``attention_mask`` padded keys have zero weight. Detached.
    """
    if tokens.dim() != 2:
        raise ConfigError("tokens", tuple(tokens.shape), "must be [batch, time]")
    out = model(input_ids=tokens, attention_mask=attention_mask, output_attentions=True, return_dict=True)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ConfigError(
            "model",
            type(model).__name__,
            "returned no attention weights; load it with attn_implementation='eager' (load_hf does)",
        )
    primary = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    cache = {f"blocks.{layer}.attn.hook_pattern": a.detach() for layer, a in enumerate(attentions)}
    return primary.detach(), cache


def hf_patterns(model: nn.Module, tokens: Tensor, attention_mask: Tensor | None = None) -> dict[int, Tensor]:
    """{layer: attention pattern [B, H, T, T]}: what ``capture.patterns`` returns for an attnlab model."""
    from attnlab.lens.capture import patterns

    return patterns(hf_run_with_cache(model, tokens, attention_mask)[1])
