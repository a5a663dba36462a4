"""The built book as a reader's browser shows it: every page of ``_build/html`` is served on
127.0.0.1 and loaded in headless Chromium at 1400 px and at 400 px (a phone).

It fails on: console errors and uncaught exceptions, formulas MathJax did not render, images that
do not load or whose alt text is missing or a file path, internal links to a missing page or
anchor, any request to another host, a page that scrolls sideways at 400 px, and display
equations that overflow without scrolling in their own box. Screenshots of the chapter pages at
both widths go to ``_build/screenshots`` (ignored by git).

Run it after building the book: ``python course.py book`` then ``python course.py test-browser`` (it needs ``BOOK_BROWSER_TEST=1``,
which that target sets, so that the plain ``python course.py test`` never depends on a built book).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from chromium import BookServer, Chromium, find_chromium, same_host

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
WIDE, PHONE = 1400, 400

if not os.environ.get("BOOK_BROWSER_TEST"):
    pytest.skip("the browser test runs after the book is built: `python course.py book`, then `python course.py test-browser` "
                "(or BOOK_BROWSER_TEST=1 pytest tests/test_browser.py)", allow_module_level=True)
if not find_chromium():
    pytest.skip("no Chromium: install Debian's package (apt-get install chromium) or set CHROMIUM", allow_module_level=True)

# Waits for MathJax (on pages that load it) and for every image, then reports what the page shows.
READ_PAGE = """(async () => {
  const mathjax = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  const hasMath = document.querySelector('span.math, div.math') !== null;
  for (let i = 0; hasMath && !mathjax() && i < 200; i++) await new Promise(r => setTimeout(r, 50));
  if (mathjax()) await MathJax.startup.promise;
  const images = [...document.images];
  images.forEach(i => { i.loading = 'eager'; });
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const math = [...document.querySelectorAll('span.math, div.math')];
  return {
    math: math.length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 80)),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80)),
    images: images.map(i => ({src: i.currentSrc || i.src, loaded: i.complete && i.naturalWidth > 0, alt: i.getAttribute('alt')})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
  };
})()"""

# At phone width: how far the page scrolls sideways, what sticks out, and display math that is cut.
READ_LAYOUT = """(() => {
  const cw = document.documentElement.clientWidth;
  const scrolls = e => { for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(p).overflowX)) return true; } return false; };
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
  const wide = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > cw + 1 && !scrolls(e) && getComputedStyle(e).position !== 'fixed';
  });
  return {
    overflow: document.documentElement.scrollWidth - cw,
    culprits: wide.slice(0, 5).map(e => name(e) + ': ' + (e.textContent || '').trim().slice(0, 60)),
    cutMath: [...document.querySelectorAll('div.math, mjx-container[display="true"]')].filter(d => d.scrollWidth > d.clientWidth + 1
        && !['auto', 'scroll'].includes(getComputedStyle(d).overflowX)).map(d => d.textContent.trim().slice(0, 60)),
  };
})()"""


def pages(root: Path) -> list[str]:
    """Every HTML page under ``root`` (a built book), as paths relative to it."""
    skip = ("_static", "_sources", "_images")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html") if p.relative_to(root).parts[0] not in skip)


def events_problems(events: list[dict], origin: str) -> dict[str, list[str]]:
    """Console errors, requests to other hosts and failed responses among DevTools events."""
    found: dict[str, list[str]] = {"console": [], "hosts": [], "responses": []}
    for e in events:
        method, params = e["method"], e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            found["console"].append(d.get("exception", {}).get("description", d.get("text", "")).splitlines()[0])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found["console"].append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found["console"].append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent" and not same_host(params["request"]["url"], origin):
            found["hosts"].append(params["request"]["url"])
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            found["responses"].append(f"{params['response']['status']} {params['response']['url']}")
    return found


def read_site(root: Path, shots: Path | None = None, screenshot=lambda page: False) -> dict:
    """Every page of ``root`` loaded at both widths: ``{"origin", "root", "server_errors", "pages"}``;
    pages for which ``screenshot(page)`` is true are saved as PNG tiles into ``shots``."""
    site: dict = {"root": root, "pages": {}}
    with BookServer(root) as server, Chromium() as browser:
        tab = browser.new_page()
        for page in pages(root):
            url, events, data = server.url(page), [], {}
            for width in (WIDE, PHONE):
                start = len(browser.events)
                tab.open(url, width=width)
                data["seen" if width == WIDE else "seen_phone"] = tab.evaluate(READ_PAGE)
                if width == PHONE:
                    data["layout"] = tab.evaluate(READ_LAYOUT)
                events += tab.events_since(start)
                if shots is not None and screenshot(page):
                    tab.screenshot_page(shots / f"{Path(page).stem}-{width}", width)
            data["events"] = events_problems(events, server.origin)
            site["pages"][page] = data
        site["origin"] = server.origin
        site["server_errors"] = list(server.errors)
    return site


def is_chapter(page: str) -> bool:
    return page.startswith("book/") and page.split("/")[1][:2].isdigit()


FILE_NAME = re.compile(r"\S*\.(png|svg|jpe?g|gif|webp)", re.IGNORECASE)


def console_problems(site: dict, d: dict) -> list[str]:
    return [f"console error: {m}" for m in dict.fromkeys(d["events"]["console"])]


def host_problems(site: dict, d: dict) -> list[str]:
    return [f"request to another host: {u}" for u in dict.fromkeys(d["events"]["hosts"])]


def response_problems(site: dict, d: dict) -> list[str]:
    return [f"failed response: {r}" for r in dict.fromkeys(d["events"]["responses"])]


def math_problems(site: dict, d: dict) -> list[str]:
    return ([f"formula not rendered: {t}" for t in d["seen"]["unrendered"]]
            + [f"MathJax error: {t}" for t in d["seen"]["mathErrors"]])


def image_problems(site: dict, d: dict) -> list[str]:
    out = []
    for img in d["seen"]["images"]:
        alt = (img["alt"] or "").strip()
        if not img["loaded"]:
            out.append(f"image does not load: {img['src']}")
        if not alt or FILE_NAME.fullmatch(alt):
            out.append(f"alt text missing or a file name ({alt!r}): {img['src']}")
    return out


def link_problems(site: dict, d: dict) -> list[str]:
    out = []
    for href in sorted(set(d["seen"]["links"])):
        parts = urlsplit(href)
        if f"{parts.scheme}://{parts.netloc}" != site["origin"]:
            continue
        path = unquote(parts.path).lstrip("/") or "index.html"
        if path.endswith("/"):
            path += "index.html"
        if not (site["root"] / path).is_file():
            out.append(f"link to a missing page: {href}")
        elif parts.fragment and path in site["pages"] and unquote(parts.fragment) not in site["pages"][path]["seen"]["ids"]:
            out.append(f"link to a missing anchor: {href}")
    return out


def layout_problems(site: dict, d: dict) -> list[str]:
    lay = d["layout"]
    out = [f"scrolls sideways by {lay['overflow']} px at {PHONE} px; sticking out: {lay['culprits']}"] if lay["overflow"] > 0 else []
    return out + [f"display equation cut at {PHONE} px: {t}" for t in lay["cutMath"]]


def report(site: dict, check) -> str:
    lines = [f"{page}: {item}" for page, data in site["pages"].items() for item in check(site, data)]
    return "\n".join(lines[:40]) + (f"\n… and {len(lines) - 40} more" if len(lines) > 40 else "")


@pytest.fixture(scope="module")
def book() -> dict:
    if not (HTML / "index.html").is_file():
        pytest.skip(f"the book is not built ({HTML / 'index.html'} is missing): run `python course.py book` first")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    return read_site(HTML, SHOTS, is_chapter)


def test_every_page_was_read(book):
    assert {"index.html", "book/00_why_lighter.html", "book/bibliography.html"} <= set(book["pages"]), sorted(book["pages"])
    assert sum(data["seen"]["math"] for data in book["pages"].values()) > 500, "the formulas of the book were not read"
    assert sum(len(data["seen"]["images"]) for data in book["pages"].values()) > 30, "the images of the book were not read"


@pytest.mark.parametrize("check", [console_problems, host_problems, response_problems, math_problems, image_problems,
                                   link_problems, layout_problems], ids=lambda f: f.__name__)
def test_book(book, check):
    msg = report(book, check)
    assert not msg, msg
    if check is response_problems:
        assert not book["server_errors"], f"the server answered errors: {book['server_errors']}"


def test_chapter_screenshots_are_saved(book):
    chapters = [p for p in book["pages"] if is_chapter(p)]
    assert len(chapters) >= 6, chapters
    for page in chapters:
        for width in (WIDE, PHONE):
            assert (SHOTS / f"{Path(page).stem}-{width}-1.png").is_file(), (page, width)


BROKEN_PAGE = """<!doctype html><html lang="vi"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>x</title></head><body>
<script>console.error("boom")</script>
<p><span class="math">\\(x^2\\)</span></p>
<img src="missing.png" alt="hình"><img src="ok.svg" alt="_images/ok.svg"><img src="http://example.org/x.png" alt="hình ngoài">
<a href="nowhere.html">a</a> <a href="index.html#no-such-anchor">b</a> <a href="index.html#here" id="here">c</a>
<div style="width: 1000px">wide</div>
<div class="math" style="overflow: hidden; width: 100px"><span style="display: inline-block; width: 500px">long</span></div>
</body></html>"""


def test_the_checks_catch_a_broken_page(tmp_path):
    """Each check fails on a page made to break it (so a passing book means something)."""
    (tmp_path / "index.html").write_text(BROKEN_PAGE, encoding="utf-8")
    (tmp_path / "ok.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>', encoding="utf-8")
    site = read_site(tmp_path)
    page = site["pages"]["index.html"]
    found = {check.__name__: "\n".join(check(site, page)) for check in
             (console_problems, host_problems, response_problems, math_problems, image_problems, link_problems, layout_problems)}
    assert "boom" in found["console_problems"]
    assert "example.org" in found["host_problems"]
    assert "404" in found["response_problems"] and site["server_errors"]
    assert "x^2" in found["math_problems"]
    assert "missing.png" in found["image_problems"] and "'_images/ok.svg'" in found["image_problems"]
    assert "nowhere.html" in found["link_problems"] and "no-such-anchor" in found["link_problems"]
    assert "#here" not in found["link_problems"]
    assert "scrolls sideways" in found["layout_problems"] and "equation cut" in found["layout_problems"]
