"""Every registry entry has a docs page and a picture, and the committed docs match the generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.attention.linear.feature_maps import FEATURE_MAPS
from attnlab.report.zoo_docs import AXES, compatibility_markdown, entry_page, feature_map_page

DOCS = Path(__file__).resolve().parents[2] / "docs"
ENTRIES = [(axis, e) for axis, (registry, _key) in AXES.items() for e in registry.entries()]


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=[f"{a}-{e.name}" for a, e in ENTRIES])
def test_entry_has_a_current_docs_page_and_a_picture(axis, entry) -> None:
    page = DOCS / "zoo" / axis / f"{entry.name}.md"
    picture = DOCS / "zoo" / "img" / f"{axis}-{entry.name}.png"
    assert page.is_file(), f"missing {page}: run `attnlab docs`"
    assert picture.is_file() and picture.stat().st_size > 1000, f"missing {picture}: run `attnlab docs`"
    assert page.read_text() == entry_page(axis, entry, f"../img/{picture.name}"), f"{page} is stale: run `attnlab docs`"


def test_compatibility_matrix_is_current() -> None:
    assert (DOCS / "compatibility.md").read_text() == compatibility_markdown(), "run `attnlab docs`"


@pytest.mark.parametrize("entry", FEATURE_MAPS.entries(), ids=FEATURE_MAPS.names())
def test_feature_map_has_a_current_docs_page_and_a_picture(entry) -> None:
    page = DOCS / "zoo" / "feature_map" / f"{entry.name}.md"
    picture = DOCS / "zoo" / "img" / f"feature_map-{entry.name}.png"
    assert picture.is_file() and picture.stat().st_size > 1000, f"missing {picture}: run `attnlab docs`"
    assert page.read_text() == feature_map_page(entry, f"../img/{picture.name}"), f"{page} is stale"


def test_zoo_lists_at_least_thirty_entries_across_the_four_axes() -> None:
    assert len(ENTRIES) + len(FEATURE_MAPS) >= 30, [f"{a}:{e.name}" for a, e in ENTRIES]
