"""Render the HTML report and the DVC plots page in headless Chromium, offline.

Chromium is driven through the DevTools protocol (``--remote-debugging-port`` plus a websocket):
every request the page issues shows up as a ``Network.requestWillBeSent`` event, including the
ones a Content-Security-Policy blocks, so "no request left the page" is checked on what the
browser attempted, not on what the policy let through. Without Chromium the tests are skipped
with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from stages import figures
from stages.html_report import render_html
from stages.report_content import Provenance, ReportContent, ReportFigure

websockets_client = pytest.importorskip(
    "websockets.sync.client", reason="the DevTools client needs the 'websockets' package"
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "plots" / "template.html"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def _find_chromium() -> str | None:
    explicit = os.environ.get("GMG_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One DevTools page session: navigate, evaluate, and record what the page asked for."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websockets_client.connect(ws_url, max_size=None, open_timeout=20)
        self.events: list[dict] = []
        self._id = 0
        for domain in ("Network", "Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def open(self, url: str, ready: str = "true", timeout: float = 20.0) -> None:
        """Navigate to ``url``; wait for the load event, then until JS ``ready`` is true."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: no load event within {timeout} s")
            self.events.append(json.loads(self.ws.recv(timeout=timeout)))
        while not self.evaluate(f"!!({ready})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: page not ready ({ready}) within {timeout} s")
            time.sleep(0.1)
        self._drain(0.3)

    def _drain(self, quiet: float) -> None:
        while True:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=quiet)))
            except TimeoutError:
                return

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error":
                out.append(e["params"]["entry"]["text"])
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:300])
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(json.dumps(e["params"]["args"])[:300])
        return out


@pytest.fixture(scope="module")
def page():
    chromium = _find_chromium()
    if chromium is None:
        pytest.skip(
            "Chromium not found (install the Debian packages 'chromium' and 'chromium-driver', "
            "or set GMG_CHROMIUM): the offline rendering checks did not run"
        )
    profile = Path(tempfile.mkdtemp(prefix="gmg-chromium-"))
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{chromium} did not start a DevTools endpoint (exit {proc.poll()})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        target = next(t for t in targets if t["type"] == "page")
        session = Page(target["webSocketDebuggerUrl"])
        yield session
    finally:
        if session is not None:
            session.ws.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _outside(urls: list[str]) -> list[str]:
    return [u for u in urls if not u.startswith(LOCAL_SCHEMES)]


def _report_page(tmp_path: Path) -> tuple[Path, list[bytes]]:
    rng = np.random.default_rng(0)
    images = (rng.random((6, 16, 16)) > 0.5).astype(np.uint8) * 255
    pngs = [
        figures.reconstruction_figure(images, 255 - images),
        figures.importance_figure(rng.random((3, 2)), ["z0", "z1", "z2"], ["shape", "scale"], "t"),
    ]
    content = ReportContent(
        title="browser check",
        summary=("tiny",),
        metrics={"dci.disentanglement": 0.5},
        figures=tuple(ReportFigure(f"f{i}.png", f"F{i}", "c", p) for i, p in enumerate(pngs)),
        latents=(),
        notes=("a note",),
        params={"report": {"seed": 0}},
        provenance=Provenance(commit=None),
    )
    path = tmp_path / "index.html"
    path.write_text(render_html(content), encoding="utf-8")
    return path, pngs


def test_report_html_loads_every_image_and_requests_nothing_outside(page, tmp_path):
    path, pngs = _report_page(tmp_path)
    page.open(path.as_uri(), ready="document.readyState === 'complete'")
    loaded = page.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    expected = [list(Image.open(io.BytesIO(p)).size) for p in pngs]
    assert [c for c, _, _ in loaded] == [True] * len(pngs)
    assert [[w, h] for _, w, h in loaded] == expected
    assert all(w > 0 for _, w, _ in loaded)
    urls = page.requested_urls()
    assert urls and urls[0] == path.as_uri()
    assert _outside(urls) == []
    assert page.errors() == []


def test_outside_request_is_detected(page, tmp_path):
    """The check above can fail: a page with a remote image is caught (the CSP blocks it)."""
    pixel = base64.b64encode(figures.png_bytes(lambda: Figure(figsize=(0.1, 0.1)))).decode()
    path = tmp_path / "remote.html"
    path.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:\"></head><body>"
        f'<img src="data:image/png;base64,{pixel}"><img src="https://example.invalid/x.png">'
        "</body></html>",
        encoding="utf-8",
    )
    page.open(path.as_uri(), ready="document.readyState === 'complete'")
    assert _outside(page.requested_urls()) == ["https://example.invalid/x.png"]
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 0)") == [
        True,
        False,
    ]


def test_dvc_plots_page_renders_offline(page, tmp_path):
    """The page DVC builds from plots/template.html draws its plots with no outside request."""
    vega = pytest.importorskip("dvc_render.vega", reason="dvc-render (a DVC dependency) missing")
    html = pytest.importorskip("dvc_render.html")
    image = pytest.importorskip("dvc_render.image")
    rows = [{"step": str(s), "loss": str(10.0 / (s + 1)), "rev": "workspace"} for s in range(20)]
    bars = [
        {"metric": m, "value": str(v), "rev": r}
        for r, vals in (("HEAD", (0.5, 0.2)), ("workspace", (0.7, 0.3)))
        for m, v in zip(("dci.disentanglement", "mig.mig"), vals, strict=True)
    ]
    out = tmp_path / "dvc_plots" / "index.html"
    picture = out.parent / "static" / "workspace_reports_traversals.png"
    picture.parent.mkdir(parents=True)
    picture.write_bytes(figures.importance_figure(np.eye(2), ["z0", "z1"], ["a", "b"], "t"))
    renderers = [
        image.ImageRenderer([{"src": str(picture), "rev": "workspace"}], "reports/traversals.png"),
        vega.VegaRenderer(rows, "plots/train_log.csv", x="step", y="loss"),
        vega.VegaRenderer(
            bars, "reports/metrics_records.json", template="bar_horizontal", x="value", y="metric"
        ),
    ]
    html.render_html(renderers, out, html_template=str(TEMPLATE))
    text = out.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in text and "<script src" not in text
    ready = "document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length >= 2"
    page.open(out.as_uri(), ready=ready)
    assert page.evaluate("typeof vega.version") == "string"
    assert page.evaluate("document.querySelectorAll('.vega-embed').length") == 2
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth)") == [
        Image.open(picture).size[0]
    ]
    assert _outside(page.requested_urls()) == []
    assert page.errors() == []
