"""Serving the view: a per-session page over shared, preloaded columns, on 127.0.0.1 by default."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryoframe.errors import InputError
from cryoframe.storage.store import ParticleStore
from cryoframe.view.selection import ViewData

__all__ = ["check_port", "make_data", "serve"]

log = logging.getLogger(__name__)


def make_data(store: ParticleStore, join: Sequence[ParticleStore] = ()) -> ViewData:
    """Open the data and read the columns the first page shows (so the page is ready at once)."""
    from cryoframe.view.app import _default_fields

    data = ViewData(store, join)
    for f in _default_fields(data.numeric)[:4]:
        data.values(f)
    data.start_pose_bins()
    import threading

    threading.Thread(target=warm_up, daemon=True).start()  # compiles while the first page loads
    return data


def warm_up() -> None:
    """Compile Datashader's and the polygon kernel's numba code on toy data (seconds, once per process),
    so the first selection on the page is as fast as the next ones."""
    import numpy as np

    from cryoframe.query.polygon import inpolygon
    from cryoframe.view.render import PixelGrid, scatter_image

    x = np.linspace(0, 1, 64, dtype=np.float32)
    scatter_image(PixelGrid(x, x[::-1].copy(), (0.0, 1.0), (0.0, 1.0), 8, 8), x > 0.5)
    inpolygon(x, x, [[0, 0], [1, 0], [0, 1]])


def check_port(address: str, port: int) -> None:
    """Raise InputError naming the port when it cannot be bound on ``address``."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: expected 0..65535")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {address} is in use; choose another with --port") from exc
            raise InputError(f"cannot listen on {address}:{port}: {exc.strerror}") from exc


def serve(data: ViewData, *, port: int = 5006, address: str = "127.0.0.1", show: bool = True,
          save_dir: str | Path | None = None, threaded: bool = False) -> Any:
    """Serve the page at http://ADDRESS:PORT/ (blocking unless ``threaded``: then the server thread,
    whose ``stop()`` ends it)."""
    import panel as pn

    from cryoframe.view.app import CurationApp

    check_port(address, port)
    save = Path(save_dir) if save_dir is not None else Path.cwd()

    def page() -> Any:
        return CurationApp(data, save_dir=save).layout

    origins = [f"localhost:{port}", f"127.0.0.1:{port}"]
    if address not in ("127.0.0.1", "localhost"):
        origins.append(f"{address}:{port}")
    log.info("cryoframe view: %d particles at http://%s:%d/ (Ctrl-C stops)", data.n, address, port)
    return pn.serve({"/": page}, port=port, address=address, show=show, websocket_origin=origins,
                    threaded=threaded, title="cryoframe view", print=False)
