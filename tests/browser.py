"""Test helper: HTML pages as the browser and the reader see them. ``Page`` parses headings, tables
and links; ``assert_self_contained`` checks that a page embeds everything; ``assert_rendered`` opens
it in headless Chromium (installed by .ci/browser, which .ci/run calls) and checks the screenshot and the DOM.

Without a browser the browser tests skip with the install instructions; with
``QWEN_FORENSICS_NEED_BROWSER=1`` (set by .ci/run) they fail instead, so CI cannot pass without them."""

from __future__ import annotations

import base64
import functools
import io
import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
NEED_BROWSER_ENV = "QWEN_FORENSICS_NEED_BROWSER"
INSTALL_HINT = ("no Chromium on PATH (looked for " + ", ".join(BROWSER_NAMES) + "). Install one: `bash .ci/browser` "
                "(Debian: apt-get install chromium; Ubuntu: snap install chromium; without root: put any Chromium "
                "or Chrome build on PATH as chromium)")


def find_chromium() -> Path | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def needs_chromium(test):
    """Run ``test`` only where a browser exists: skip elsewhere, fail where one is required (CI)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        if find_chromium() is None:
            if os.environ.get(NEED_BROWSER_ENV) == "1":
                pytest.fail(f"{NEED_BROWSER_ENV}=1 but {INSTALL_HINT}")
            pytest.skip(INSTALL_HINT)
        return test(*args, **kwargs)
    return run

TAB_BLUE = (31, 119, 180)  # matplotlib's first colour: the first curve and the first run's bars


class Page(HTMLParser):
    """Headings, tables (caption + cell texts), every src/href and tag counts of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.tables: list[dict] = []
        self.links: list[str] = []
        self.tags: Counter = Counter()
        self._buf: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.links += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "poster")]
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        if tag in ("h1", "h2", "h3", "td", "th", "caption"):
            self._buf = []

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, "".join(self._buf)))
        elif tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append("".join(self._buf))
        elif tag == "caption":
            self.tables[-1]["caption"] = "".join(self._buf)
        if tag in ("h1", "h2", "h3", "td", "th", "caption"):
            self._buf = None

    def table(self, caption: str = "", first_header: str = "") -> list[list[str]]:
        for t in self.tables:
            if (caption and t["caption"] == caption) or (first_header and t["rows"][0][0] == first_header):
                return t["rows"]
        raise AssertionError(f"no table {caption or first_header!r} in the page")


def assert_self_contained(text: str) -> list[Image.Image]:
    """Only data: URIs, no script / external style; returns the embedded pictures."""
    page = Page(text)
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["iframe"] == 0
    assert "url(" not in text and "@import" not in text
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links), page.links[:3]
    pictures = [Image.open(io.BytesIO(base64.b64decode(link.split(",", 1)[1]))) for link in page.links]
    assert all(p.format == "PNG" for p in pictures)
    return pictures


def chromium(tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on ``page`` (a fresh profile; nothing reaches the network)."""
    profile = tmp_path / "chromium-profile"
    browser = find_chromium()
    assert browser is not None, INSTALL_HINT
    command = [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *mode, page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def assert_rendered(tmp_path: Path, page: Path, headings: list[str], min_blue: int) -> None:
    """The page renders (a varied screenshot with matplotlib's blue in it) and the DOM has the headings."""
    shot = tmp_path / f"{page.stem}.png"
    dom = Page(chromium(tmp_path, page, "--dump-dom", f"--screenshot={shot}", "--window-size=1280,2000").stdout)
    assert [h for tag, h in dom.headings if tag == "h2"] == headings
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape[:2] == (2000, 1280)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = len(np.unique(packed))
    assert colours > 200, f"screenshot of {page.name} has only {colours} colours"
    assert (rgb.min(axis=-1) < 250).mean() > 0.02, "screenshot is almost all white"
    blue = (np.abs(rgb.astype(int) - TAB_BLUE).max(axis=-1) <= 12).sum()
    assert blue >= min_blue, f"only {blue} pixels of the first plotted colour: a chart did not render"
