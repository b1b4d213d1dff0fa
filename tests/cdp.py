"""A minimal Chrome DevTools Protocol driver for the browser tests (headless Debian chromium).

No browser-automation dependency: `websockets` (already installed with Prefect) talks CDP to
one page. Clicks are real mouse events at the element's centre (the Prefect UI is a Vue app:
synthetic `el.click()` misses handlers bound to pointer events).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    """Debian's chromium; installed with apt when missing (we are root on the test machines)."""
    path = find_chromium()
    if path:
        return path
    if shutil.which("apt-get") is None:
        raise RuntimeError("chromium is not installed and apt-get is not available")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900,
                   capture_output=True)
    path = find_chromium()
    if not path:
        raise RuntimeError("apt-get install chromium did not provide a chromium binary")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    """One browser tab: send CDP commands, evaluate JS, click, wait, screenshot."""

    def __init__(self, ws_url: str):
        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30)
        self._id = 0

    def close(self) -> None:
        self.ws.close()

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == my_id:  # events (no id) are not needed here
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})  # type: ignore[no-any-return]

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression[:80]!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout=60)

    def wait_for(self, predicate_js: str, timeout: float = 60.0, every: float = 0.5, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(predicate_js)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate_js}")
            time.sleep(every)

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def wait_for_text(self, text: str, timeout: float = 60.0) -> None:
        self.wait_for(f"document.body && document.body.innerText.includes({json.dumps(text)})", timeout,
                      what=f"text {text!r}")

    def _center_of(self, selector: str, text: str, exact: bool) -> dict[str, float] | None:
        js = f"""(() => {{
            const want = {json.dumps(text)};
            const els = [...document.querySelectorAll({json.dumps(selector)})].filter(e => {{
                const t = (e.innerText || e.textContent || '').trim();
                const r = e.getBoundingClientRect();
                return r.width > 0 && r.height > 0 && ({'t === want' if exact else 't.includes(want)'});
            }});
            if (!els.length) return null;
            const e = els[els.length - 1];
            e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()"""
        return self.evaluate(js)  # type: ignore[no-any-return]

    def click_text(self, text: str, selector: str = "button, a, [role=menuitem], [role=button], [role=option]",
                   exact: bool = True, timeout: float = 30.0) -> None:
        """Click (real mouse events) the last visible element matching `selector` whose text is `text`."""
        deadline = time.monotonic() + timeout
        last = None
        while True:  # wait until the element exists and stopped moving (the UI shifts while it loads)
            pos = self._center_of(selector, text, exact)
            if pos is not None and pos == last:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no visible, settled {selector} with text {text!r}")
            last = pos
            time.sleep(0.4)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": pos["x"], "y": pos["y"], "button": "left",
                                                   "clickCount": 1})

    def click_until(self, text: str, until_text: str, selector: str = "*", attempts: int = 4,
                    wait_s: float = 15.0) -> None:
        """Click `text` until `until_text` shows (a click can land while the page still re-renders)."""
        for i in range(attempts):
            self.click_text(text, selector=selector)
            try:
                self.wait_for_text(until_text, timeout=wait_s)
                return
            except TimeoutError:
                if i == attempts - 1:
                    raise

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    """A headless chromium with a fresh profile; `page()` gives its first tab."""

    def __init__(self, executable: str, profile_dir: Path, width: int = 1440, height: int = 1000):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", f"--remote-debugging-port={self.port}",
             "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._pages: list[Page] = []

    def page(self, timeout: float = 60.0) -> Page:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
                    targets = json.loads(r.read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    page = Page(pages[0]["webSocketDebuggerUrl"])
                    page.send("Page.enable")
                    self._pages.append(page)
                    return page
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium's DevTools endpoint did not come up")
            time.sleep(0.5)

    def close(self) -> None:
        for p in self._pages:
            try:
                p.close()
            except Exception:
                pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
