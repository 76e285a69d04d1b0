"""The lens runs on the device of its model and tensors: capture, activation patching, path patching, direct logit
attribution and the logit lens give on every device present what they give on the CPU (absent devices are skipped
with the reason).

Tolerance: float32 on both devices; a value here comes from ~10^4 operations on numbers of magnitude ≤ 10 (2 layers
of width 32, vocabulary 31), and two devices may order their reductions differently, so the results agree to a few
units of 10^4 · 10 · 2^-24 ≈ 6e-3 relative to the values' scale; a real device bug (a tensor left on the CPU, a
patch in the wrong place) moves values by far more, or raises.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.checks import liven
from attnlab.lens.attribution import attribution_names, direct_logit_attribution, logit_lens
from attnlab.lens.capture import capture_patterns, run_with_cache
from attnlab.lens.patching import activation_patching, logit_diff_metric, patching_names
from attnlab.lens.path_patching import path_patching, path_patching_names
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from attnlab.train.device import devices_present

DEVICES = ["cpu", "cuda", "mps"]
B, T, V = 2, 8, 31


def on(device: str) -> torch.device:
    if device not in devices_present():
        pytest.skip(f"no {device} device on this machine (present: {', '.join(devices_present())})")
    return torch.device(device)


def model_and_inputs(device: torch.device) -> tuple[TransformerLM, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_seq_len=16)
    model = liven(TransformerLM(cfg)).eval()
    clean = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 5) % V
    return model.to(device), clean.to(device), corrupted.to(device), torch.tensor([3, 4], device=device)


def lens_outputs(device: torch.device) -> dict[str, torch.Tensor]:
    """Every lens function's result on ``device``, each checked to live there, returned on the CPU."""
    model, clean, corrupted, correct = model_and_inputs(device)
    wrong = (correct + 1) % V
    metric = logit_diff_metric(correct, wrong)
    names = sorted({*attribution_names(model), *patching_names(model, "z"), *path_patching_names(model)})
    logits, cache = run_with_cache(model, clean, names)
    _, corrupted_cache = run_with_cache(model, corrupted, names)
    _, patterns = capture_patterns(model, clean)
    out = {
        "logits": logits,
        "pattern": patterns[1],
        "patching": activation_patching(model, corrupted, cache, metric, "z", "head"),
        "path": path_patching(model, cache, corrupted_cache, [[], [(0, 1)]], [(1, 0)], metric),
        "attribution": direct_logit_attribution(model, cache, correct, wrong).heads,
        "logit_lens": logit_lens(model, cache),
    }
    for name, value in out.items():
        assert value.device.type == device.type, f"{name} came back on {value.device}, not {device}"
    return {name: value.detach().cpu() for name, value in out.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_the_lens_gives_on_each_device_what_it_gives_on_the_cpu(device: str) -> None:
    here = on(device)
    expected = lens_outputs(torch.device("cpu"))
    got = expected if here.type == "cpu" else lens_outputs(here)
    for name, value in expected.items():
        scale = max(1.0, float(value.abs().max()))
        torch.testing.assert_close(got[name], value, rtol=0, atol=6e-3 * scale, msg=name)
    assert expected["patching"].std() > 1e-3  # the corruption matters, so a patch in the wrong place would show
