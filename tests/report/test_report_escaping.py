"""A results database is untrusted input: names, sweep names and errors holding HTML must reach the report as
text. Checked on the HTML source, and in headless Chromium (skipped, with the reason, when it is missing):
the DOM has the leaderboard and the figures, the figures are decoded, and no script from the database ran."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from synthetic_db import FAIL_LR

from attnlab.report.markdown import write_report
from attnlab.runner.store import Store

ALERT = "<script>alert(1)</script>"
ALERT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
MARK_SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
MARK_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
BREAKOUT = "mqar\"><script>document.body.setAttribute('data-pwned','attr')</script>"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
TAB_BLUE = (31, 119, 180)  # matplotlib's first line colour; nothing in the page's CSS is near it


@dataclass
class Hostile:
    folder: Path
    md: str
    html: str


@pytest.fixture(scope="module")
def hostile(make_db: Callable[..., Store], tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    """A report whose sweep, task, mechanism, position and error strings (and its title) carry HTML."""
    store = make_db(name=f"sweep{ALERT}", lrs=[1e-3, FAIL_LR], widths=[16, 32], error=f"Boom {MARK_IMG}\nmore")
    with store.transaction() as c:  # no registered mechanism or task has such a name: write them as a bad DB would
        c.execute("UPDATE runs SET mechanism = 'softmax' || ? WHERE mechanism = 'softmax'", (ALERT,))
        c.execute("UPDATE runs SET mechanism = 'sigmoid' || ? WHERE mechanism = 'sigmoid'", (MARK_SCRIPT,))
        c.execute("UPDATE runs SET task = ?, position = ?", (BREAKOUT, f"rope{ALERT}"))
    folder = tmp_path_factory.mktemp("hostile")
    path = write_report(store, folder, title=f"report {MARK_SCRIPT}")
    return Hostile(folder, path.read_text(), (folder / "report.html").read_text())


def test_the_html_never_contains_the_raw_tag(hostile: Hostile) -> None:
    assert ALERT not in hostile.html and "<script" not in hostile.html.lower() and "<img src=x" not in hostile.html


def test_the_html_shows_the_escaped_tag(hostile: Hostile) -> None:
    assert ALERT_ESCAPED in hostile.html


def test_the_error_text_is_escaped_in_the_html(hostile: Hostile) -> None:
    assert "Boom &lt;img src=x onerror=&quot;document.body.setAttribute(" in hostile.html


def test_the_markdown_turns_the_tags_into_entities(hostile: Hostile) -> None:
    assert ALERT not in hostile.md and "<script" not in hostile.md and ALERT_ESCAPED in hostile.md


def test_file_names_made_from_a_task_name_are_safe(hostile: Hostile) -> None:
    names = [p.name for p in hostile.folder.iterdir()]
    assert names and all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, kept off the network, with a throw-away profile."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([CHROMIUM or "chromium", *flags, *args], capture_output=True, text=True, timeout=120)


def dump_dom(page: Path, profile: Path) -> str:
    result = chromium("--dump-dom", page.as_uri(), profile=profile)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


@needs_chromium
def test_scripts_do_run_in_this_chromium_so_the_checks_below_mean_something(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>control</p>{MARK_SCRIPT}</body></html>")
    assert 'data-pwned="script"' in dump_dom(page, tmp_path / "profile")


@needs_chromium
def test_in_chromium_the_dom_has_the_leaderboard_and_every_figure_and_no_script_ran(
    hostile: Hostile, tmp_path: Path
) -> None:
    dom = dump_dom(hostile.folder / "report.html", tmp_path / "profile")
    figures = len(re.findall(r"<img ", hostile.html))
    ran = 'data-pwned="' in dom  # the attribute a script would set; the escaped payloads only hold data-pwned'
    assert (
        dom.count('<table class="leaderboard">'),
        len(re.findall(r'<img src="data:image/png;base64,', dom)),
        ran,
        ALERT_ESCAPED in dom,
    ) == (1, figures, False, True)
    assert figures >= 4


def blue_pixels(png: bytes) -> int:
    """Pixels within 12 levels of matplotlib's first line colour in every channel."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(TAB_BLUE, dtype=np.int16)) <= 12).all(axis=-1).sum())


def screenshot(page: Path, out: Path, profile: Path) -> bytes:
    result = chromium(
        "--window-size=1200,4000", "--hide-scrollbars", f"--screenshot={out}", page.as_uri(), profile=profile
    )
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]
    return out.read_bytes()


@needs_chromium
def test_in_chromium_the_figures_are_decoded_and_drawn(hostile: Hostile, tmp_path: Path) -> None:
    """Plot lines and bars in matplotlib's blue appear on screen; with the image data broken they do not."""
    page = hostile.folder / "report.html"
    drawn = blue_pixels(screenshot(page, tmp_path / "shot.png", tmp_path / "p1"))
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", hostile.html))
    missing = blue_pixels(screenshot(broken, tmp_path / "broken.png", tmp_path / "p2"))
    assert (drawn > 2000, missing < 50) == (True, True), (drawn, missing)
