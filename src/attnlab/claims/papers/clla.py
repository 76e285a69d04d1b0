"""Yang et al. 2024, "Lossless KV Cache Compression to 2%" (CLLA, cross-layer latent attention, arXiv:2410.15252).

CLLA shares one MLA-style latent across groups of layers and quantises it, and the paper reports a KV cache under
2% of the original's with no loss in quality (abstract, §4). Two claims on one configuration (4 layers, width 64;
CLLA with a 16-dimensional int4 latent shared by all 4 layers against multi-head attention): the cache's bytes per
token after a prefill, counted from the tensors the cache holds (exact), and the held-out loss of byte-level
language modelling over three seeds.
"""

from __future__ import annotations

import torch

from attnlab.attention.config import AttentionConfig
from attnlab.claims.base import Arm, Claim, FunctionExperiment, Measurement, Paper, SweepExperiment
from attnlab.claims.sweeps import lm_sweep
from attnlab.claims.verdict import Rule
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import build_model

PAPER = Paper("Lossless KV Cache Compression to 2%", "Yang et al.", 2024, "2410.15252")

MODEL = {"n_layers": 4, "n_heads": 4}
CLLA = {"normaliser": "softmax", "heads": "clla", "heads_args": {"kv_rank": 16, "share_every": 4, "quant_bits": 4}}
SWEEP = lm_sweep("claims-clla", [{"normaliser": "softmax"}, CLLA], n_layers=MODEL["n_layers"])
CLLA_LABEL = AttentionConfig.model_validate(CLLA).label  # how the leaderboard names it
SCALE = (
    "At width 64 and 4 layers the decoupled RoPE key (d_R = d_head = 16 values per token, kept in float32) weighs "
    "more than the int4 latent itself; the ratio falls with depth and width (multi-head attention keeps 2·L·d "
    "values per token), so a model of the paper's size is far below 2% with the same latent."
)


def cache_bytes_per_token(length: int = 256) -> Measurement:
    """Bytes per token the KV cache holds after a prefill of ``length`` tokens, CLLA over multi-head attention."""
    rows: list[dict[str, object]] = []
    per_token: dict[str, float] = {}
    for label, attention in (("softmax", {"normaliser": "softmax"}), (CLLA_LABEL, CLLA)):
        cfg = ModelConfig(vocab_size=256, d_model=64, max_seq_len=length, attention=attention, **MODEL)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        cache = model.new_cache()
        with torch.no_grad():
            model(torch.randint(0, 256, (1, length)), cache)
        per_token[label] = cache.nbytes() / length
        rows.append({"mechanism": label, "cache bytes per token": per_token[label], "layers": cfg.n_layers})
    ratio = per_token[CLLA_LABEL] / per_token["softmax"]
    series = {"bytes per token": [(0.0, per_token["softmax"]), (1.0, per_token[CLLA_LABEL])]}
    return Measurement(exact=ratio, rows=rows, series=series, xlabel="0: MHA, 1: CLLA", ylabel="bytes per token")


CLAIMS = [
    Claim(
        name="clla-cache-under-2pct",
        paper=PAPER,
        statement="CLLA's KV cache is under 2% of multi-head attention's.",
        where="abstract, §4",
        experiment=FunctionExperiment(cache_bytes_per_token),
        rule=Rule("KV-cache bytes per token, CLLA / MHA (float32 model, int4 latent)", "less", 0.02),
        scale_note=SCALE,
    ),
    Claim(
        name="clla-matches-mha-loss",
        paper=PAPER,
        statement="With that cache, CLLA loses nothing in quality against multi-head attention.",
        where="abstract; §4, Table 2",
        experiment=SweepExperiment(SWEEP, "loss", Arm(CLLA_LABEL, "lm"), Arm("softmax", "lm")),
        rule=Rule("held-out loss, CLLA − MHA, nats/token", "within", 0.05),
        scale_note=SCALE,
    ),
]
