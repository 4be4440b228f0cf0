"""The report tests' browser gate: skip with install instructions, or fail where CI demands a browser."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from browser import NEED_BROWSER_ENV, find_chromium, needs_chromium


@needs_chromium
def _opens_a_browser():
    return "ran"


def test_without_a_browser_the_test_skips_and_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(NEED_BROWSER_ENV, raising=False)
    assert find_chromium() is None
    with pytest.raises(Skipped, match="apt-get install chromium.*snap install chromium.*without root"):
        _opens_a_browser()


def test_ci_fails_without_a_browser(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(NEED_BROWSER_ENV, "1")
    with pytest.raises(Failed, match=NEED_BROWSER_ENV):
        _opens_a_browser()


def test_a_browser_on_path_is_found(monkeypatch, tmp_path):
    fake = tmp_path / "chromium-browser"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() == fake
    assert _opens_a_browser() == "ran"
