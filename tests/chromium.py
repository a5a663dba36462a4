"""Headless Chromium driven over the DevTools protocol, and a local server for the built book.

Only Debian's ``chromium`` and the ``websocket-client`` package are used: no browser is
downloaded. Every host except 127.0.0.1 is unresolvable inside the browser, and each request
to another host is recorded, so a page that reaches out of the machine is caught.

    with BookServer(html_dir) as server, Chromium() as browser:
        page = browser.new_page()
        page.open(server.url("index.html"), width=1400)
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def find_chromium() -> str | None:
    """Path of the Chromium executable (``$CHROMIUM`` or ``chromium`` on the PATH), or None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class BookServer:
    """Serve a folder on 127.0.0.1 (a free port) from a thread; records every 4xx/5xx path."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.errors: list[tuple[int, str]] = []
        errors = self.errors

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
                pass

            def send_response(self, code: int, message: str | None = None) -> None:
                if code >= 400:
                    errors.append((code, self.path))
                super().send_response(code, message)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.origin}/{path.lstrip('/')}"

    def __enter__(self) -> BookServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Chromium:
    """A headless Chromium process with a fresh profile and one DevTools websocket."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise FileNotFoundError("chromium not found: install Debian's package (apt-get install chromium)")
        self.timeout = timeout
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="book-chromium-")
        self._proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        self._ws = websocket.create_connection(self._devtools_url(), timeout=self.timeout, suppress_origin=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 (the process is killed below anyway)
            pass
        self._ws.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + self.timeout
        seen = []
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            seen.append(line)
            if line.startswith("DevTools listening on "):
                return line.split(" on ", 1)[1].strip()
        self._proc.kill()
        raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        while True:
            reply = self._receive(time.monotonic() + self.timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float, since: int = 0) -> dict:
        """The first event from ``events[since]`` on (received or arriving within ``timeout`` s)
        that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            self._receive(deadline)

    def _receive(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from chromium in time")
        self._ws.settimeout(left)
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError("no answer from chromium in time") from exc
        if "method" in message:
            self.events.append(message)
        return message

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        return page


class Page:
    """One tab. ``open`` loads a URL at a viewport width and returns the events of that load."""

    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def open(self, url: str, width: int, height: int = 900, timeout: float = 60.0) -> list[dict]:
        """Load ``url`` in a ``width``-px-wide viewport (a phone's below 600 px) and wait for its load event."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        start = len(self.browser.events)
        self.send("Page.navigate", {"url": url})
        mine = lambda name: lambda e: e.get("sessionId") == self.session and e["method"] == name  # noqa: E731
        self.browser.wait_for(mine("Page.loadEventFired"), timeout, since=start)
        for _ in range(5):  # a page that moves on by itself (a meta refresh) is read where it lands
            loaded = len(self.browser.events)
            try:
                self.browser.wait_for(mine("Page.frameStartedLoading"), 0.5, since=loaded)
            except TimeoutError:
                break
            self.browser.wait_for(mine("Page.loadEventFired"), timeout, since=loaded)
        return self.events_since(start)

    def evaluate(self, expression: str, timeout: float = 60.0) -> object:
        """Value of a JavaScript expression (promises are awaited); a page exception is an error."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(1000 * timeout)})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def events_since(self, start: int) -> list[dict]:
        return [e for e in self.browser.events[start:] if e.get("sessionId") == self.session]

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def screenshot_page(self, stem: Path, width: int, tile: int = 10000) -> list[Path]:
        """The whole page at ``width`` px as PNG tiles ``stem-1.png``, ``stem-2.png``, … of ``tile``
        px each (a viewport that tall, scrolled tile by tile: sticky headers stay in place)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": min(tile, height), "deviceScaleFactor": 1, "mobile": width < 600})
        paths = []
        for i, top in enumerate(range(0, height, tile), start=1):
            self.evaluate(f"window.scrollTo(0, {top}); new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            path = Path(f"{stem}-{i}.png")
            self.screenshot(path)
            paths.append(path)
        return paths


def same_host(url: str, origin: str) -> bool:
    """True for URLs served by ``origin`` and for data:/blob:/about: URLs that never leave the page."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "devtools"):
        return True
    return f"{parts.scheme}://{parts.netloc}" == origin
