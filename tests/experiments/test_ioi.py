"""``ioi_circuit`` on a tiny float64 model with a word-level tokenizer, and ``attnlab circuits ioi`` end to end.

Tolerance: float64 (ε = 2.2e-16); every value is a mean of at most ~10^5 rounded operations on numbers of
magnitude ≤ 100 (3 layers of width 32), so chunking the prompts differently moves it by far less than
ATOL = 1e-9, while a prompt counted twice or a wrong position moves it by ≥ 1e-3.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from ioi_helpers import WordTokenizer, tiny_lm
from typer.testing import CliRunner

from attnlab.cli.circuits import write_ioi
from attnlab.experiments.ioi import CLASSES, ioi_circuit, top_heads
from attnlab.experiments.prompts.ioi import ioi_prompts
from attnlab.lens.attribution import direct_logit_attribution
from attnlab.lens.capture import run_with_cache
from attnlab.lens.patching import activation_patching, logit_diff, logit_diff_metric, normalised
from attnlab.lens.path_patching import path_patch_heads
from conftest import liven

ATOL = 1e-9
WORDS = WordTokenizer()


def model_and_prompts(n: int = 6, corruption: str = "abc") -> tuple[Any, Any]:
    model = liven(tiny_lm(len(WORDS.vocab))).double()
    return model, ioi_prompts(WORDS, n, seed=2, corruption=corruption, bos=1)


def everything(_name: str) -> bool:
    return True


@pytest.mark.parametrize("corruption", ["abc", "s2_flip"])
def test_the_result_is_the_lens_on_the_whole_set_whatever_the_chunking(corruption: str) -> None:
    model, p = model_and_prompts(corruption=corruption)
    receivers = [(1, 2), (2, 0)]
    result = ioi_circuit(model, p, batch_size=5, prompt_batch=4, top=3, receivers=receivers)
    # the same measurements made at once on all six prompts (padding after each end is never read)
    clean_logits, clean = run_with_cache(model, p.clean, everything)
    corrupted_logits, corrupted = run_with_cache(model, p.corrupted, everything)
    clean_ld = logit_diff(clean_logits, p.io, p.s, p.end)
    assert result.clean_diff == pytest.approx(float(clean_ld.mean()), abs=ATOL)
    assert result.corrupted_diff == pytest.approx(
        float(logit_diff(corrupted_logits, p.io, p.s, p.end).mean()), abs=ATOL
    )
    assert result.accuracy == pytest.approx(float((clean_ld > 0).double().mean()))
    attribution = direct_logit_attribution(model, clean, p.io, p.s, p.end).heads.mean(0)
    torch.testing.assert_close(result.attribution, attribution, rtol=0, atol=ATOL)
    metric = logit_diff_metric(p.io, p.s, p.end)
    patched = activation_patching(model, p.corrupted, clean, metric)
    expected = normalised(patched, result.clean_diff, result.corrupted_diff)
    torch.testing.assert_close(result.patching, expected, rtol=0, atol=ATOL)
    rows = torch.arange(len(p))
    for layer in range(3):
        pattern = clean[f"blocks.{layer}.attn.hook_pattern"]  # [B, H, T, T]
        for grid, query, key in (
            (result.attention_io, p.end, p.io_pos),
            (result.attention_s1, p.end, p.s1_pos),
            (result.attention_s2, p.end, p.s2_pos),
            (result.attention_s2_s1, p.s2_pos, p.s1_pos),
        ):
            torch.testing.assert_close(grid[layer], pattern[rows, :, query, key].mean(0), rtol=0, atol=ATOL)
    path = path_patch_heads(model, clean, corrupted, receivers, metric, "q")
    expected = (path - result.clean_diff) / abs(result.clean_diff)  # NaN above the last name mover's layer
    torch.testing.assert_close(result.path_q, expected, rtol=0, atol=ATOL, equal_nan=True)
    assert result.path_q[:2].isfinite().all() and result.path_q[2].isnan().all()
    assert result.patching.std() > 1e-3 and result.attribution.std() > 1e-3  # not a constant grid


def test_the_classes_follow_their_signatures() -> None:
    model, p = model_and_prompts(n=8)
    result = ioi_circuit(model, p, top=2, min_attention=0.05, min_effect=0.0)
    to_s = result.attention_s1 + result.attention_s2
    for h in result.classes["name mover"]:
        assert result.attribution[h] > 0 and result.attention_io[h] >= 0.05 and result.attention_io[h] > to_s[h]
    for h in result.classes["negative name mover"]:
        assert result.attribution[h] < 0 and result.attention_io[h] >= 0.05 and result.attention_io[h] > to_s[h]
    for h in result.classes["S suppression"]:
        assert result.attribution[h] > 0 and to_s[h] >= 0.05 and to_s[h] > result.attention_io[h]
    for h in result.classes["S-inhibition"]:
        assert result.path_q[h] < 0
    assert (
        result.classes["duplicate-token"]
        == top_heads(result.attention_s2_s1, 2)[: len(result.classes["duplicate-token"])]
    )
    assert all(len(result.classes[name]) <= 2 for name in CLASSES)
    assert sum(len(v) for v in result.classes.values()) > 0


def test_top_heads_skips_nan_and_orders_both_ways() -> None:
    grid = torch.tensor([[0.5, float("nan")], [-1.0, 2.0]])
    assert top_heads(grid, 3) == [(1, 1), (0, 0), (1, 0)]
    assert top_heads(grid, 2, descending=False) == [(1, 0), (0, 0)]


def test_outputs_are_a_csv_row_per_head_and_the_heatmaps(tmp_path: Path) -> None:
    model, p = model_and_prompts(n=2)
    result = ioi_circuit(model, p, batch_size=4, prompt_batch=2)
    written = write_ioi(result, tmp_path, "tiny")
    with (tmp_path / "heads.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4 and rows[5]["head"] == "L1H1"
    assert float(rows[5]["attribution"]) == pytest.approx(float(result.attribution[1, 1]))
    pngs = [path for path in written if path.suffix == ".png"]
    assert len(pngs) == 6 and all(path.read_bytes().startswith(b"\x89PNG") for path in pngs)


# ------------------------------------------------------------------------------------------------ the command
runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["gpt2"], "error: model='gpt2': no loader for this model (allowed: smollm2)"),
        (["smollm2", "--n-prompts", "3"], "error: n_prompts=3: must be even and at least 2"),
        (["smollm2", "--n-prompts", "0"], "error: n_prompts=0: must be even and at least 2"),
        (["smollm2", "--corruption", "abb"], "error: corruption='abb': not an IOI corruption (allowed: abc, s2_flip)"),
        (["smollm2", "--batch-size", "0"], "error: batch_size=0: must be at least 1"),
        (["smollm2", "--prompt-batch", "0"], "error: prompt_batch=0: must be at least 1"),
        (["smollm2", "--threads", "0"], "error: threads=0: must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    from attnlab.cli.main import app

    result = runner.invoke(app, ["circuits", "ioi", *args])
    assert result.exit_code == 2
    assert result.output.startswith(expected) and result.output.count("\n") == 1


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from attnlab.cli.main import app

    target = tmp_path / "file"
    target.write_text("")
    result = runner.invoke(app, ["circuits", "ioi", "smollm2", "--out", str(target)])
    assert result.exit_code == 2 and result.output.startswith("error: out=")


def test_the_command_runs_end_to_end_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnlab.cli.circuits as circuits
    from attnlab.cli.main import app

    model = liven(tiny_lm(len(WORDS.vocab)))
    monkeypatch.setitem(circuits.MODELS, "tiny", {"bos": 1, "pad": 0})
    monkeypatch.setattr(circuits, "load_model", lambda name: (model, WORDS))
    args = ["circuits", "ioi", "tiny", "--n-prompts", "4", "--batch-size", "8", "--top", "2", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "logit diff IO − S: clean" in result.output and "Head classes" in result.output
    for name in ("name mover", "S-inhibition", "duplicate-token"):
        assert name in result.output
    assert (tmp_path / "heads.csv").is_file() and (tmp_path / "patching.png").is_file()
