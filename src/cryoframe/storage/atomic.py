"""All-or-nothing output: every file or directory cryoframe writes goes through here.

An output is built under a hidden temporary sibling (``.NAME.tmp-PID-RAND``, :func:`temp_path`)
and renamed onto its final name only when complete, so readers never see a partial store, stack,
``.star``/``.cs`` file, plot or JSON, and a killed process leaves at most debris that the next
write next to it removes.  :func:`check_output` is the one "output exists / --overwrite" rule.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryoframe.errors import StoreError

__all__ = ["atomic_path", "check_output", "replace_into", "temp_path", "write_bytes_atomic", "write_json_atomic"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def temp_path(final: Path) -> Path:
    """A hidden temporary sibling of ``final`` (``.NAME.tmp-PID-RAND``) to write and then rename.

    Leftovers of processes that died mid-write (killed, power loss) are removed here, so an
    interrupted operation leaves the old state or the new one, and eventually no debris.
    """
    final = Path(final)
    for old in final.parent.glob(f".{final.name}.tmp-*"):
        parts = old.name.rsplit(".tmp-", 1)[-1].split("-")
        if len(parts) == 2 and parts[0].isdigit() and not _alive(int(parts[0])):
            _remove(old)
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def check_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """The absolute output path; refuses an existing one unless ``overwrite`` and a missing folder."""
    p = Path(path).absolute()
    if p.exists() and not overwrite:
        raise StoreError(f"{p}: already exists (choose another --out or pass --overwrite)")
    if not p.parent.is_dir():
        raise StoreError(f"{p.parent}: output directory does not exist")
    return p


def replace_into(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` (file or directory) onto ``final``; an existing directory there
    is moved aside first and removed after the rename (a directory cannot be replaced in one step)."""
    old = None
    if final.is_dir() and not final.is_symlink():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_path(out) as tmp:`` write ``tmp`` (a file or a directory); on success it is
    renamed onto ``out``, on any exception it is removed and ``out`` is left as it was."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        replace_into(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    """JSON of ``obj`` (NumPy scalars as numbers, paths as strings), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=indent))
