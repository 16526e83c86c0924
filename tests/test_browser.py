"""lorastudy.publish.browser in a real headless Chromium: a tiny HTML folder with images that load, one missing and
one that is not a PNG; check_pages reports exactly the broken ones and writes a screenshot of each page."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from lorastudy.publish import browser

pytestmark = pytest.mark.timeout(90)  # the browser's own timeouts fire first; this only stops a stuck driver


def _require_browser() -> None:
    if not browser.CHROMIUM.is_file():
        pytest.skip(f"{browser.CHROMIUM} is not installed (Debian package chromium): no browser to check with")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')")


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG, written byte by byte (a red-to-blue gradient)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in (255 * x // width, 0, 255 - 255 * x // width))
                    for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def page(title: str, body: str) -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.html: two figures that load (the second lazy, far below the fold); broken.html: one that loads,
    one whose file is missing and one that is not a PNG; the pages the default selection leaves out."""
    root = tmp_path_factory.mktemp("html")
    (root / "_images").mkdir()
    (root / "_images" / "a.png").write_bytes(png(40, 30))
    (root / "_images" / "b.png").write_bytes(png(16, 16))
    (root / "_images" / "junk.png").write_bytes(b"this is not a PNG\n" * 20)
    (root / "good.html").write_text(page("good", "<h1>Good</h1><img src='_images/a.png' alt='a'>"
                                         "<div style='height:5000px'></div>"
                                         "<img src='_images/b.png' alt='b' loading='lazy'>"))
    (root / "broken.html").write_text(page("broken", "<img src='_images/a.png'><img src='_images/missing.png'>"
                                           "<img src='_images/junk.png'>"))
    (root / "index.html").write_text("<meta http-equiv='refresh' content='0; url=good.html'>")
    for name in ("genindex.html", "search.html"):
        (root / name).write_text(page(name, "<img src='_images/missing.png'>"))
    return root


def test_chapter_pages_leave_out_index_genindex_and_search(site: Path) -> None:
    assert browser.chapter_pages(site) == ["broken.html", "good.html"]


def test_check_pages_reports_exactly_the_broken_images(site: Path, tmp_path: Path) -> None:
    _require_browser()
    shots = tmp_path / "shots"
    assert browser.check_pages(site, screenshots=shots) == {
        "broken.html": ["_images/missing.png", "_images/junk.png"], "good.html": []}
    for name in ("broken.png", "good.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    _, height = struct.unpack(">II", (shots / "good.png").read_bytes()[16:24])
    assert height > 5000  # full page, down to the lazy figure


def test_named_pages_only_and_missing_pages_fail_before_the_browser(site: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.html"):
        browser.check_pages(site, ["good.html", "nope.html"])
    _require_browser()
    assert browser.check_pages(site, ["good.html"]) == {"good.html": []}


def test_command_line_prints_a_line_per_page_and_exits_1(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _require_browser()
    assert browser.main([str(site)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["broken.html: 2 of 3 figures did not load: _images/missing.png, _images/junk.png",
                   "good.html: 2 figures, all loaded"]
