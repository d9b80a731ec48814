"""Responsiveness of ``cryoframe view`` in a real headless Chromium (selenium), at 1e6/1e7(/1e8) particles.

For each metadata-only synthetic store: ``cryoframe view STORE --no-browser`` is started as its own
process; measured are the page-ready time (process start → the count shown in the browser), the
latency from the Enter key in the expression box to the count's update and from the mouse release
of a box drag on the scatter to the count's update (``performance.now()`` in the page, median of
``--tries``), the linked plots' redraw (event → last plot data update), and the server's peak RSS.
No peer runs: no other tool offers a browser selection over 1e7 particles (cryoDRGN's ``dashboard``
lasso is reported unresponsive at 400k).  Appends a table to ``bench/RESULTS.md``.

    python bench/bench_view.py --rows 1000000 10000000 [--store 1000000=/path/m1e6.cf ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
sys.path.insert(0, str(HERE))


class PeakRSS(threading.Thread):
    """Peak resident memory (bytes) of a process and its children, sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.running = psutil.Process(pid), 0, True

    def run(self) -> None:
        import psutil

        while self.running:
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(True))
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            time.sleep(0.1)


def measure(store: Path, tries: int) -> dict[str, float]:
    import numpy as np

    from cryoframe.view.browser import Page, free_port

    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cryoframe", "-q", "view", str(store), "--port", str(port),
                             "--no-browser"], stderr=subprocess.PIPE, text=True)
    mem = PeakRSS(proc.pid)
    mem.start()
    url = f"http://127.0.0.1:{port}/"
    page = None
    try:
        import socket

        while True:  # wait until the server listens (a GET would build a page session), then for the count
            if proc.poll() is not None:
                raise RuntimeError(f"cryoframe view exited: {proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        page = Page(url, timeout=120)
        page.timeout = 30  # per update; a try that does not change the count fails loudly
        ready = time.perf_counter() - t0
        print(f"  ready after {ready:.1f} s", file=sys.stderr, flush=True)
        n = page.count()
        enter, enter_plot, drag, drag_plot = [], [], [], []
        qs = np.linspace(11000, 22000, tries)
        for i, q in enumerate(qs):
            before = page.count()
            page.arm(before)
            page.type_where(f"`ctf/df1_A` < {q:.1f}")
            (enter_plot if i % 2 else enter).append(page.plot_latency() if i % 2 else page.latency())
            if i % 2:
                enter.append(float(page.driver.execute_script("return window.__cf_lat;")))
            print(f"  enter {i}: count {page.count()}, {enter[-1]:.0f} ms", file=sys.stderr, flush=True)
        page.type_where("")  # back to everything, then box drags of different sizes
        page.wait(lambda: page.count() == n)
        for i in range(tries):
            before = page.count()
            page.arm(before)
            f = 0.25 + 0.5 * i / max(tries - 1, 1)
            page.drag_scatter(0.1, 0.1, f, 0.9 - 0.3 * f)
            (drag_plot if i % 2 else drag).append(page.plot_latency() if i % 2 else page.latency())
            if i % 2:
                drag.append(float(page.driver.execute_script("return window.__cf_lat;")))
            print(f"  drag {i}: count {page.count()}, {drag[-1]:.0f} ms", file=sys.stderr, flush=True)
        return {"n": n, "ready_s": ready, "enter_ms": statistics.median(enter), "drag_ms": statistics.median(drag),
                "enter_plot_ms": statistics.median(enter_plot), "drag_plot_ms": statistics.median(drag_plot),
                "tries": len(enter), "peak_gb": mem.peak / 1e9}
    finally:
        if page is not None:
            page.close()
        mem.running = False
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--store", action="append", default=[], metavar="ROWS=PATH",
                    help="use an existing metadata-only synthetic store for ROWS")
    ap.add_argument("--tries", type=int, default=12)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from _common import machine, record

    from cryoframe.testing import synth_store

    given = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.store)}
    lines = [f"\n## Interactive view (`bench/bench_view.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start. `cryoframe view STORE --no-browser` on a metadata-only synthetic store, driven "
             "by headless Chromium (selenium); latencies measured in the page with `performance.now()` from the "
             "Enter key / the mouse release of a box drag to the count's update (median of the tries), plots = to "
             "the last linked-plot data update (scatter image, 3 histograms, viewing directions). Ready = server "
             "process start to the count shown. No peer: no other tool offers this at these sizes (cryoDRGN's "
             "`dashboard` lasso is reported unresponsive at 400k particles). Goals: count ≤ 200 ms, plots ≤ 1 s, "
             "ready ≤ 10 s at 1e7; peak RSS ≤ 4 GB at 1e8.\n",
             "| particles | ready s | Enter→count ms | drag→count ms | Enter→plots ms | drag→plots ms | tries | "
             "server peak RSS GB |", "|---|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        store = given.get(rows, WORK / f"view_meta_{rows}.cf")
        if not (store / "manifest.json").exists():
            WORK.mkdir(exist_ok=True)
            synth_store(store, rows, metadata_only=True, overwrite=True, seed=0)
        r = measure(store, args.tries)
        row = (f"| {r['n']:.0e} | {r['ready_s']:.1f} | {r['enter_ms']:.0f} | {r['drag_ms']:.0f} | "
               f"{r['enter_plot_ms']:.0f} | {r['drag_plot_ms']:.0f} | {r['tries']} | {r['peak_gb']:.2f} |")
        print(row, flush=True)
        lines.append(row)
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
