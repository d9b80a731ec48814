"""Drive the view page in headless Chromium with Selenium (tests and bench/bench_view.py).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and ``pip install selenium``; :func:`missing` says what is absent.  Controls are found by their
``cf-NAME`` class through Bokeh's shadow roots.
"""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any

__all__ = ["Page", "free_port", "missing"]

DEEP = """
function deep(sel, root) { root = root || document; let r = root.querySelector(sel); if (r) return r;
  for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) { r = deep(sel, el.shadowRoot); if (r) return r; } }
  return null; }
"""


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        return "chromium is not installed (apt-get install -y chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    """One headless browser on ``url``; ``close()`` quits it."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        o = Options()
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1400,1800"):
            o.add_argument(a)
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if binary is None:
            raise RuntimeError("no chromium binary on PATH (apt-get install -y chromium chromium-driver)")
        o.binary_location = binary
        self.driver = webdriver.Chrome(options=o, service=Service(shutil.which("chromedriver")))
        self.driver.set_script_timeout(timeout)
        self.timeout = timeout
        self.open(url)

    def open(self, url: str) -> float:
        """Load ``url`` and wait for the count; returns the seconds until it showed."""
        t0 = time.perf_counter()
        self.driver.get(url)
        self.wait(lambda: self.count() is not None)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.driver.quit()

    def find(self, name: str) -> Any:
        """The element of control ``name`` (CSS class ``cf-NAME``), or None."""
        return self.driver.execute_script(DEEP + "return deep(arguments[0]);", f".cf-{name}")

    def inner(self, name: str, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.find(name).shadow_root.find_element(By.CSS_SELECTOR, css)

    def text(self, name: str) -> str:
        """Text of the page's ``data-testid=NAME`` element (messages, errors; '' when absent)."""
        return self.driver.execute_script(DEEP + "const e = deep(arguments[0]); return e ? e.textContent : '';",
                                          f"[data-testid={name}]").strip()

    def count(self) -> int | None:
        t = self.driver.execute_script(DEEP + "const e = deep('[data-testid=count]'); return e ? e.textContent : null;")
        return int(t) if t not in (None, "") else None

    def where(self) -> str:
        return self.inner("where", "input").get_attribute("value")

    def wait(self, cond: Any, timeout: float | None = None) -> Any:
        end = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < end:
            try:
                r = cond()
            except Exception:  # noqa: BLE001 - element not there yet
                r = None
            if r:
                return r
            time.sleep(0.05)
        raise TimeoutError("the page did not update in time")

    def type_where(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.inner("where", "input")
        self.driver.execute_script("arguments[0].value = '';", box)  # no event: clear() would apply ''
        box.send_keys((text or " ") + Keys.ENTER)

    def type_into(self, name: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.inner(name, "input")
        self.driver.execute_script("arguments[0].value = '';", box)  # no event: clear() would apply ''
        box.send_keys((text or " ") + Keys.ENTER)

    def click(self, name: str) -> None:
        self.inner(name, "button").click()

    def canvas_box(self) -> dict[str, float]:
        """The scatter's frame (plot area) in page pixels."""
        return self.driver.execute_script(DEEP + """
            const f = deep('.cf-scatter'); const r = f.getBoundingClientRect();
            return {left: r.left, top: r.top, width: r.width, height: r.height};""")

    def drag_scatter(self, fx0: float, fy0: float, fx1: float, fy1: float) -> None:
        """Drag with the active tool (box select) between two points given as fractions of the scatter."""
        from selenium.webdriver.common.action_chains import ActionChains

        el = self.find("scatter")
        r = self.canvas_box()
        # the plot frame sits inside the figure: keep well within it (toolbar above, axes left/below)
        def pt(fx: float, fy: float) -> tuple[int, int]:
            return int(r["width"] * (0.2 + 0.7 * fx) - r["width"] / 2), int(r["height"] * (0.15 + 0.65 * fy) - r["height"] / 2)

        (x0, y0), (x1, y1) = pt(fx0, fy0), pt(fx1, fy1)
        ActionChains(self.driver).move_to_element_with_offset(el, x0, y0).click_and_hold() \
            .move_by_offset((x1 - x0) // 2, (y1 - y0) // 2).move_by_offset(x1 - x0 - (x1 - x0) // 2,
                                                                              y1 - y0 - (y1 - y0) // 2) \
            .release().perform()

    def quiet(self, quiet_s: float = 0.5, timeout: float = 30.0) -> None:
        """Wait until no plot update arrived for ``quiet_s`` (the previous action's redraw is done)."""
        end = time.monotonic() + timeout
        last = self.driver.execute_script("return window.__cf_plot === undefined ? null : window.__cf_plot;")
        while time.monotonic() < end:
            time.sleep(quiet_s)
            cur = self.driver.execute_script("return window.__cf_plot === undefined ? null : window.__cf_plot;")
            if cur == last:
                return
            last = cur

    def arm(self, before: int | None) -> None:
        """Start timing: the next Enter key or mouse release (seen by the page, ``performance.now()``)
        starts the clock, the count's text changing from ``before`` stops it; see :meth:`latency`.
        Waits first for the previous action's plot updates to end, so they are not counted."""
        self.quiet()
        self.driver.execute_script(DEEP + """
            const before = String(arguments[0]); window.__cf_t0 = null; window.__cf_lat = null;
            window.__cf_plot = null;
            if (!window.__cf_hooked && window.Bokeh && Bokeh.documents.length) { window.__cf_hooked = true;
              for (const d of Bokeh.documents) for (const m of d.all_models) if (m.type === 'ColumnDataSource'
                  || (m.constructor && m.constructor.__name__ === 'ColumnDataSource')) {
                const mark = () => { window.__cf_plot = performance.now(); };
                m.change.connect(mark); if (m.patching) m.patching.connect(mark); } }
            if (!window.__cf_armed) { window.__cf_armed = true;
              document.addEventListener('keydown', e => { if (e.key === 'Enter') window.__cf_t0 = performance.now(); }, true);
              document.addEventListener('pointerup', () => { window.__cf_t0 = performance.now(); }, true); }
            const tick = () => { const e = deep('[data-testid=count]');
              if (window.__cf_t0 !== null && e && e.textContent !== before) {
                window.__cf_lat = performance.now() - window.__cf_t0; return; }
              setTimeout(tick, 2); };
            tick();""", before)

    def latency(self) -> float:
        """Milliseconds from the armed event to the count's update (waits for it)."""
        return float(self.wait(lambda: self.driver.execute_script("return window.__cf_lat;")))

    def plot_latency(self, quiet_s: float = 0.5, timeout: float = 30.0) -> float:
        """Milliseconds from the armed event to the last plot data update (after the count changed, the
        first plot update seen, then no update for ``quiet_s``); NaN when none came within ``timeout``."""
        self.latency()
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            cur = self.driver.execute_script("return (window.__cf_plot !== null && window.__cf_t0 !== null"
                                             " && window.__cf_plot > window.__cf_t0) ? window.__cf_plot : null;")
            if cur is not None and cur == last:
                return float(self.driver.execute_script("return window.__cf_plot - window.__cf_t0;"))
            last = cur
            time.sleep(quiet_s if cur is not None else 0.05)
        return float("nan")
