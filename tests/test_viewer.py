"""The HTML viewer in a real headless Chromium, driven through the DevTools protocol over a pipe.

No test passes without a browser: without Chromium they skip, saying how to install it (`.ci/run` installs the
Debian packages `chromium` and `chromium-driver` when it runs as root).

What is checked, as a person would: the page loads from file:// with no console error and no network request
(everything file: or data:), the WebGL picture is not blank, the wireframe and a layer toggle change the pixels,
hovering a known grid point shows that point's (α, β, loss, accuracy) -- expected values from the analytic bowl
the file was written from -- and files on different grids sit at their own coordinates.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_plot_surfaces import bowl_acc, bowl_file, bowl_loss, line_file, partial_done

from llmpi.report.landscape import Landscape, Scale
from llmpi.report.viewer import write_html

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1200, 800


def chromium() -> str | None:
    explicit = os.environ.get("LLMPI_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Browser:
    """Headless Chromium and one page, spoken to with the Chrome DevTools Protocol over --remote-debugging-pipe
    (fds 3 and 4 of the browser; NUL-terminated JSON messages): no port, no websocket, no extra package."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, to_browser_w = (self._high(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (self._high(fd) for fd in os.pipe())

        def child_fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-extensions",
            "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe",
            "about:blank",
        ]  # fmt: skip
        self.log = profile / "chromium.log"
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            close_fds=False, preexec_fn=child_fds,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out, self._in = to_browser_w, from_browser_r
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send("Page.bringToFront")  # a background page gets no animation frames: WebGL would not redraw
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _high(fd: int) -> int:
        """The same pipe end at a number above 10 (non-inheritable), so dup2 onto 3 and 4 cannot clobber it."""
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._replies.pop(message["id"], None)
                    if waiting is not None:
                        waiting.put(message)
                else:
                    self.events.append(message)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        """Send a command and wait for its reply; a protocol error fails the test with its message."""
        with self._lock:
            self._next += 1
            ident = self._next
            reply: queue.Queue = queue.Queue()
            self._replies[ident] = reply
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        try:
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {method} within {timeout} s") from None
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        """A command to the page's session."""
        return self.call(method, session=self.session, timeout=timeout, **params)

    def evaluate(self, expression: str, timeout: float = 60):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                           timeout=timeout)  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {expression}")

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)

    def screenshot(self) -> np.ndarray:
        """The page as an (h, w, 3) float array in [0, 1]."""
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        return mpimg.imread(io.BytesIO(png), format="png")[..., :3]

    def mouse(self, kind: str, x: float, y: float, **extra) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (as a person would, not element.click())."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        )
        self.mouse("mouseMoved", *box)
        self.mouse("mousePressed", *box, button="left", clickCount=1)
        self.mouse("mouseReleased", *box, button="left", clickCount=1)

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium()
    if executable is None:
        pytest.skip(
            "headless Chromium not found, so the HTML viewer is not tested: install the Debian packages chromium "
            "and chromium-driver (bash .ci/run does, as root), or set LLMPI_CHROMIUM to a Chromium binary"
        )
    b = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Viewer pages: one bowl; three landscapes (two grids, one partial) overlaid; two 1D files."""
    d = tmp_path_factory.mktemp("viewer")
    bowl = bowl_file(d / "bowl.h5", n=26, lo=-1.0, hi=1.0)
    small = bowl_file(d / "small.h5", n=11, lo=-0.5, hi=0.5, a0=0.0, b0=0.0)
    partial = bowl_file(d / "partial.h5", n=26, done=partial_done(26, 10))
    read = lambda *paths: [Landscape.read(p) for p in paths]
    return {
        "one": write_html(read(bowl), Scale(), d / "one.html"),
        "three": write_html(read(bowl, small, partial), Scale(), d / "three.html"),
        "lines": write_html(read(line_file(d / "a.h5"), line_file(d / "b.h5", a0=0.3)), Scale(), d / "lines.html"),
    }


def load(browser: Browser, page: Path) -> None:
    browser.open(page.as_uri())
    browser.wait_for("window.llmpiViewer && window.llmpiViewer.ready")
    time.sleep(0.5)  # WebGL draws on the next animation frames


def problems(browser: Browser) -> list[str]:
    """Console errors, uncaught exceptions and error log entries seen since the page was opened."""
    out = []
    for e in browser.events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            out.append(json.dumps(p["exceptionDetails"])[:500])
        elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(json.dumps(p["args"])[:500])
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(p["entry"]["text"])
    return out


def requests(browser: Browser) -> list[str]:
    return [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]


def plot_area(image: np.ndarray) -> np.ndarray:
    """The figure, right of the control panel."""
    return image[40:, 300:]


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).max(-1) > 0.1).mean())


def rerender(browser: Browser, selector: str) -> None:
    """Click a control and wait until the figure has been redrawn."""
    before = browser.evaluate("window.llmpiViewer.renders")
    browser.click(selector)
    browser.wait_for(f"window.llmpiViewer.renders > {before}")
    time.sleep(0.5)


def look_down(browser: Browser) -> None:
    """A top-down orthographic camera, so that the screen position of a point is an affine function of (α, β)."""
    rerender(browser, "#top")  # the viewer's "view from above" button
    browser.evaluate(
        "window.picked = null; document.getElementById('plot').on('plotly_hover', "
        "d => { window.picked = [d.points[0].x, d.points[0].y]; })"
    )


def pick(browser: Browser, x: float, y: float) -> tuple[float, float] | None:
    """The (α, β) that plotly picks under the mouse at (x, y); None where there is no surface."""
    browser.evaluate("window.picked = null")
    browser.mouse("mouseMoved", x - 3, y - 3)
    browser.mouse("mouseMoved", x, y)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        got = browser.evaluate("window.picked")
        if got:
            return tuple(got)
    return None


def screen_map(browser: Browser) -> np.ndarray:
    """The affine map (x, y, 1) -> (α, β) of the view, measured with plotly's own picking at four places."""
    cx, cy = browser.evaluate(
        "(() => { const r = document.getElementById('plot').getBoundingClientRect(); "
        "return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    screen = [(cx + dx, cy + dy) for dx in (-130, -50, 30) for dy in (-125, -45, 35, 115)]  # averages the snapping
    found = [(p, got) for p in screen if (got := pick(browser, *p)) is not None]  # off the surface: nothing
    assert len(found) >= 6, f"hovering the middle of the view picks too little: {found}"
    A = np.array([[x, y, 1.0] for (x, y), _ in found])
    coef, *_ = np.linalg.lstsq(A, np.array([got for _, got in found]), rcond=None)
    return coef


def hover_point(browser: Browser, coef: np.ndarray, a: float, b: float) -> str:
    """Hover the grid point (a, b) with the mouse, as a person would (homing in on it, the way plotly picks the
    vertex nearest the cursor), and return the text of the hover label shown there."""
    M, c = coef[:2].T, coef[2]
    target = np.array([a, b])
    at = np.linalg.solve(M, target - c)
    step, last = 1.0, None
    for _ in range(10):
        got = pick(browser, *at)
        assert got is not None, f"nothing to hover at {at}"
        miss = target - np.array(got)
        if np.allclose(miss, 0, atol=1e-9):
            label = "Array.from(document.querySelectorAll('.hovertext')).map(e => e.textContent).join(' | ')"
            return browser.wait_for(label, timeout=20)
        if last is not None and (np.sign(miss) == -np.sign(last)).any():
            step /= 2  # overshot: the cursor was near a cell's edge
        at, last = at + step * np.linalg.solve(M, miss), miss
    raise AssertionError(f"could not bring the mouse onto ({a}, {b}); last picked {got}")


def numbers(text: str) -> dict[str, float]:
    """{'α': 0.4, 'train loss': 0.25, ...} from a hover label."""
    import re

    return {k.strip(): float(v.replace("−", "-")) for k, v in re.findall(r"([αβ]|[a-z]+ [a-z]+) = ([-−0-9.e+]+)", text)}


# -- tests --------------------------------------------------------------------------------------------------------


def test_page_loads_offline_with_no_error_and_draws_something(browser, pages):
    load(browser, pages["three"])
    assert problems(browser) == []
    foreign = [u for u in requests(browser) if not u.startswith(("file:", "data:"))]
    assert foreign == [], "the page must work offline: nothing but file: and data: URLs"
    image = plot_area(browser.screenshot())
    coloured = (image.max(-1) - image.min(-1)) > 0.15
    assert coloured.mean() > 0.05, "the surfaces are drawn (WebGL), not a blank page"
    assert len(np.unique((image * 15).astype(int).reshape(-1, 3), axis=0)) > 50
    title = browser.evaluate("document.querySelector('.gtitle').textContent")
    assert "3 landscapes" in title and "SYNTHETIC data" in title
    panel = browser.evaluate("document.getElementById('layers').textContent")
    assert "261 of 676 points" in panel  # the partial file: 10 rows of 26, plus one point


def test_wireframe_and_layer_toggles_change_the_picture(browser, pages):
    load(browser, pages["three"])
    plain = plot_area(browser.screenshot())
    rerender(browser, "#wireframe")
    wired = plot_area(browser.screenshot())
    assert browser.evaluate("document.getElementById('plot').data.some(t => t.uid === 'wire-0')") is True
    assert changed(plain, wired) > 0.01
    rerender(browser, "#layer-0")  # hide the big bowl
    hidden = plot_area(browser.screenshot())
    assert browser.evaluate("document.getElementById('plot').data[0].visible") is False
    assert changed(wired, hidden) > 0.05
    rerender(browser, "#layer-0")
    back = plot_area(browser.screenshot())
    assert changed(wired, back) < changed(wired, hidden) / 5, "showing it again restores the picture"
    rerender(browser, "#surface")  # wireframe only
    assert browser.evaluate("document.getElementById('plot').data[0].hidesurface") is True
    assert problems(browser) == []


def test_hover_shows_the_values_of_a_known_point(browser, pages):
    load(browser, pages["one"])
    look_down(browser)
    coef = screen_map(browser)
    a, b = -0.36, -0.6  # a grid point of the 26x26 grid (step 0.08)
    text = hover_point(browser, coef, a, b)
    got = numbers(text)
    assert got["α"] == pytest.approx(a) and got["β"] == pytest.approx(b), text
    assert got["train loss"] == pytest.approx(float(bowl_loss(a, b)), rel=1e-5), text
    assert got["train accuracy"] == pytest.approx(float(bowl_acc(a, b)), rel=1e-5), text
    assert "%" in text and "bowl" in text


def test_overlaid_files_of_different_grids_sit_at_their_own_coordinates(browser, pages):
    load(browser, pages["three"])
    look_down(browser)
    coef = screen_map(browser)  # measured on the 26x26 bowl, on top where the surfaces overlap
    rerender(browser, "#layer-0")  # hide the big bowl and the partial one: the small grid alone under the cursor
    rerender(browser, "#layer-2")
    a, b = -0.3, -0.2  # a point of the 11x11 grid over [-0.5, 0.5]², a different grid in the same (α, β) plane
    text = hover_point(browser, coef, a, b)
    got = numbers(text)
    assert "small" in text
    assert got["α"] == pytest.approx(a) and got["β"] == pytest.approx(b), text
    assert got["train loss"] == pytest.approx(float(bowl_loss(a, b, 0.0, 0.0)), rel=1e-5), text
    xs = browser.evaluate("document.getElementById('plot').data.filter(t => t.type === 'surface').map(t => t.x)")
    assert xs[1] == pytest.approx(np.linspace(-0.5, 0.5, 11)) and xs[0] == pytest.approx(np.linspace(-1, 1, 26))


def test_log_and_clip_controls_redraw_the_heights(browser, pages):
    load(browser, pages["one"])
    z = lambda: np.array(browser.evaluate("document.getElementById('plot').data[0].z"), dtype=float)
    expected = bowl_loss(*np.meshgrid(np.linspace(-1, 1, 26), np.linspace(-1, 1, 26)))
    assert z() == pytest.approx(expected)
    rerender(browser, "#log")
    assert z() == pytest.approx(np.log10(expected))
    assert "log10" in browser.evaluate("document.getElementById('plot').layout.scene.zaxis.title.text")
    rerender(browser, "#log")
    browser.evaluate("document.getElementById('clip').value = '1.5'")
    rerender(browser, "#clipOn")
    assert z() == pytest.approx(np.minimum(expected, 1.5))
    assert problems(browser) == []


def test_1d_viewer_draws_curves_with_hover(browser, pages):
    load(browser, pages["lines"])
    assert problems(browser) == [] and all(u.startswith(("file:", "data:")) for u in requests(browser))
    traces = browser.evaluate("document.getElementById('plot').data.map(t => [t.name, t.yaxis || 'y'])")
    assert ["a: train loss", "y"] in traces and ["b: test accuracy", "y2"] in traces
    a = 0.5  # hover the train loss curve of file b at α = 0.5
    x, y = browser.evaluate(f"""(() => {{
        const gd = document.getElementById("plot"), fl = gd._fullLayout;
        const r = gd.getBoundingClientRect();
        return [r.left + fl.xaxis._offset + fl.xaxis.l2p({a}),
                r.top + fl.yaxis._offset + fl.yaxis.l2p({bowl_loss(a, 0, 0.3, 0)})];
    }})()""")
    browser.mouse("mouseMoved", x - 5, y)
    browser.mouse("mouseMoved", x, y)
    label = "Array.from(document.querySelectorAll('.hovertext')).map(e => e.textContent).join(' | ')"
    got = numbers(browser.wait_for(label, timeout=20))
    assert got["α"] == pytest.approx(a)
    assert got["train loss"] == pytest.approx(float(bowl_loss(a, 0.0, 0.3, 0.0)), rel=1e-5)
