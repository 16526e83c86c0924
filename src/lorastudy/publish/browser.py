"""Does every figure of the built book load in a real browser? Headless Chromium opens each chapter page over
file://, waits for it to load, and reports each <img> that the browser did not decode (`complete` false,
`naturalWidth` 0, or `decode()` rejected): a missing file, a broken PNG, a wrong relative path. (A truncated
PNG whose header is intact still decodes, partly, and counts as loaded: the browser draws what it has.)

    python -m lorastudy.publish.browser book/_build/html [--screenshots DIR]

prints one line per page and exits 1 when any image did not load (run it after `make book`).

The browser is Debian's /usr/bin/chromium driven by Playwright (a dev extra), launched with the system binary
so nothing is downloaded. Requests off the machine (http, https) are aborted, so the check is offline and
deterministic: an image served from another site counts as not loaded. index.html is never opened by
default: it is a meta-refresh page (and headless screenshots of it hang); the chapter pages are opened
directly. Every step has a timeout, so a hung browser fails with BrowserCheckError instead of blocking.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
NOT_CHAPTERS = frozenset({"index.html", "genindex.html", "search.html"})
# known to be needed here as root (no sandbox) and offline (no network services, no first-run, no updates)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OFF_MACHINE = re.compile(r"^(https?|wss?)://")

# Runs in the page: makes lazy images eager, waits (at most `ms`) for each to finish or fail and to decode,
# then returns [src, loaded] for every <img> in document order.
_IMAGES_JS = """
async (ms) => {
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  const settle = (img) => new Promise((done) => {
    if (img.complete) return done();
    img.addEventListener("load", done, {once: true});
    img.addEventListener("error", done, {once: true});
  }).then(() => img.decode()).then(() => true, () => false);
  const timeout = new Promise((done) => setTimeout(() => done(null), ms));
  const decoded = await Promise.race([Promise.all(imgs.map(settle)), timeout]);
  return imgs.map((img, i) => [img.getAttribute("src") || img.currentSrc,
                               Boolean(decoded && decoded[i] && img.complete && img.naturalWidth > 0)]);
}
"""


class BrowserCheckError(RuntimeError):
    """The browser could not be started, or a page did not load in time."""


def chapter_pages(html_dir: Path) -> list[str]:
    """The book's chapter pages: every top-level *.html but the index, the general index and the search page."""
    return sorted(p.name for p in Path(html_dir).glob("*.html") if p.name not in NOT_CHAPTERS)


def image_report(html_dir: Path, pages: list[str] | None = None, screenshots: Path | None = None, *,
                 timeout_s: float = 30.0) -> dict[str, list[tuple[str, bool]]]:
    """For each page (relative to html_dir; default chapter_pages), every <img> as (src, loaded); a full-page
    PNG of each page into `screenshots` (PAGE.png, '/' in the page's path as '_') when given."""
    # dev extra only: the package and its other commands run without Playwright installed.
    # Playwright, not Selenium: a PyPI wheel with its own driver that runs the system Chromium offline
    # (Selenium would need chromedriver, Debian's chromium-driver, which is not installed here).
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    html_dir = Path(html_dir).resolve()
    pages = chapter_pages(html_dir) if pages is None else list(pages)
    missing = [p for p in pages if not (html_dir / p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such page in {html_dir}: {', '.join(missing)}")
    if not CHROMIUM.is_file():
        raise BrowserCheckError(f"{CHROMIUM} is not installed (Debian package chromium)")
    if screenshots is not None:
        Path(screenshots).mkdir(parents=True, exist_ok=True)
    ms = int(timeout_s * 1000)
    report: dict[str, list[tuple[str, bool]]] = {}
    page_name = "(starting the browser)"
    with tempfile.TemporaryDirectory(prefix="lorastudy-chromium-") as profile:
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=ms,
                    viewport={"width": 1280, "height": 900})
                try:
                    context.set_default_timeout(ms)
                    context.set_default_navigation_timeout(ms)
                    context.route(OFF_MACHINE, lambda route: route.abort())
                    tab = context.new_page()
                    for page_name in pages:
                        tab.goto((html_dir / page_name).as_uri(), wait_until="load", timeout=ms)
                        report[page_name] = [(str(src), bool(ok)) for src, ok in tab.evaluate(_IMAGES_JS, ms)]
                        if screenshots is not None:
                            shot = Path(screenshots) / (Path(page_name).with_suffix(".png").as_posix()
                                                        .replace("/", "_"))
                            tab.screenshot(path=str(shot), full_page=True, timeout=ms)
                finally:
                    context.close()
        except PlaywrightError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BrowserCheckError(f"{page_name}: {first}") from err
    return report


def check_pages(html_dir: Path, pages: list[str] | None = None, screenshots: Path | None = None, *,
                timeout_s: float = 30.0) -> dict[str, list[str]]:
    """For each page (default: every chapter page), the src of each <img> that did not load; [] when all did."""
    return {page: [src for src, ok in images if not ok]
            for page, images in image_report(html_dir, pages, screenshots, timeout_s=timeout_s).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorastudy.publish.browser",
                                     description="Check in headless Chromium that every image of the book loads.")
    parser.add_argument("html_dir", type=Path, help="the built book, e.g. book/_build/html")
    parser.add_argument("--screenshots", type=Path, default=None, help="save a full-page PNG of each page here")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each step (default 30)")
    args = parser.parse_args(argv)
    if not chapter_pages(args.html_dir):
        print(f"no chapter pages in {args.html_dir}", file=sys.stderr)
        return 1
    try:
        report = image_report(args.html_dir, None, args.screenshots, timeout_s=args.timeout)
    except (BrowserCheckError, FileNotFoundError, ImportError) as err:
        print(f"browser check failed: {err}", file=sys.stderr)
        return 1
    failed = False
    for page, images in report.items():
        bad = [src for src, ok in images if not ok]
        if bad:
            failed = True
            print(f"{page}: {len(bad)} of {len(images)} figures did not load: {', '.join(bad)}")
        else:
            print(f"{page}: {len(images)} figures, all loaded")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
