"""Headless Chromium driven over the DevTools protocol, for the dashboard's browser tests.

The protocol runs over ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file
descriptors 3 and 4), so this needs no WebSocket client and no driver package: the standard library
and a ``chromium`` binary are enough.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser binary: RLPRUNE_TEST_CHROMIUM, else the first of the usual names on PATH."""
    named = os.environ.get("RLPRUNE_TEST_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


def _high_fd(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or above, so moving it onto 3 and 4 in the child can clobber nothing."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium with one page (tab) attached; commands are synchronous."""

    def __init__(self, binary: str, download_dir: Path, width: int = 1280, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="rlprune-chromium-")
        to_browser_r, to_browser_w = map(_high_fd, os.pipe())
        from_browser_r, from_browser_w = map(_high_fd, os.pipe())

        def child_fds() -> None:  # runs in the child before exec: Chromium reads fd 3 and writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--mute-audio", f"--window-size={width},{height}",
                # Only loopback resolves: a page that needs a CDN or any other host fails its test.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        self._next_id = 0
        self._lock = threading.Lock()
        self._waiting: dict[int, dict[str, Any]] = {}
        self._replies = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []  # uncaught exceptions and console errors (CSP violations among them)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir),
                                                  "eventsEnabled": True}, session=None)
        target = next(t for t in self.send("Target.getTargets", session=None)["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                 session=None)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                        "mobile": False})

    # -- protocol -------------------------------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = self._in.read(65536)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._replies:
                        self._waiting[message["id"]] = message
                        self._replies.notify_all()
                else:
                    self._on_event(message)
        with self._replies:
            self._replies.notify_all()

    def _on_event(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        params = message.get("params", {})
        if message["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif (message["method"] == "Log.entryAdded" and params["entry"]["level"] == "error"
              and params["entry"].get("source") != "network"):  # an HTTP error answer is the page's to handle
            self.errors.append(params["entry"]["text"])
        elif message["method"] == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool | None = True,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its reply; ``session=None`` addresses the browser itself."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is True:
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._replies:
            while ident not in self._waiting:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise BrowserError(f"no reply to {method}")
                self._replies.wait(min(left, 0.5))
            reply = self._waiting.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # -- page helpers ---------------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'")

    def js(self, expression: str) -> Any:
        """Evaluate an expression in the page (awaiting a promise) and return its value as JSON."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True, "userGesture": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20.0, interval: float = 0.1) -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {expression}")
            time.sleep(interval)

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def set_value(self, selector: str, value: str) -> None:
        self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.value = {json.dumps(value)};"
                " el.dispatchEvent(new Event('input', {bubbles: true}));"
                " el.dispatchEvent(new Event('change', {bubbles: true})); })()")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files for an <input type=file>, as a user picking them would (scripts cannot)."""
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})
        self.js(f"document.querySelector({json.dumps(selector)}).dispatchEvent(new Event('change', {{bubbles: true}}))")

    def text(self, selector: str) -> str:
        return self.js(f"document.querySelector({json.dumps(selector)})?.textContent ?? ''")

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.send("Browser.close", session=None, timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()
        shutil.rmtree(self.profile, ignore_errors=True)
