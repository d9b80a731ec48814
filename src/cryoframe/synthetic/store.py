"""A synthetic ParticleStore written directly (``cryoframe synth``): images and metadata of
:mod:`cryoframe.synthetic.generators`, no intermediate files."""

from __future__ import annotations

import json
import os
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from cryoframe.errors import InputError
from cryoframe.synthetic.files import _info
from cryoframe.synthetic.generators import (
    BATCH,
    Kind,
    _check,
    _noise_sigma,
    make_metadata,
    make_particles,
    make_truth,
)

if TYPE_CHECKING:
    from cryoframe.storage.store import ParticleStore

__all__ = ["synth_store"]


def synth_store(
    out: str | os.PathLike[str], n: int, box: int = 64, classes: int = 8, snr: float = 0.05, seed: int = 0,
    kind: Kind = "2d", metadata_only: bool = False, overwrite: bool = False, psize_A: float = 2.0,
    ctf: bool = True, batch_size: int = BATCH, junk: float = 0.0,
) -> ParticleStore:
    """Write a synthetic ParticleStore at ``out`` directly (no intermediate files); returns it.

    Metadata: every :func:`make_metadata` field except ``blob/path``/``blob/idx`` (images live in
    the store), plus ``_image_row`` = row number when images are written.  Images: (n, box, box)
    float32 from :func:`make_particles`, written chunk by chunk.  ``extras/truth.npz`` holds the
    per-particle truth (``uid``, ``class``, ``junk``, ``defocus_group``) and ``extras/truth.json``
    the mixtures and noise level.  Everything streams ``batch_size`` rows at a time.
    ``junk`` > 0: that fraction of the images are junk (empty picks, debris, ice/carbon edges; see
    :func:`make_particles`) and truth.npz also holds ``junk_kind`` and ``view`` (-1 for junk).
    """
    import pyarrow as pa

    from cryoframe.schema.types import arrow_field, numpy_to_arrow
    from cryoframe.storage.store import IMAGE_ROW, StoreWriter

    _check(kind, classes, box, seed)
    if n < 1 or not snr > 0:
        raise InputError(f"need n >= 1 and snr > 0 (got {n}, {snr})")
    params = {"out": str(out), "n": n, "box": box, "classes": classes, "snr": snr, "seed": seed, "kind": kind,
              "metadata_only": metadata_only, "overwrite": overwrite, "psize_A": psize_A, "ctf": ctf,
              "batch_size": batch_size, **({"junk": junk} if junk else {})}
    with StoreWriter(out, op="synth", params=params, overwrite=overwrite) as w:
        extras = w.extras_dir()
        truth_spec = {"uid": np.uint64, "class": np.uint32, "junk": np.bool_, "defocus_group": np.uint8}
        if junk > 0:
            truth_spec.update({"junk_kind": np.uint8, "view": np.int32})
        tmp = {k: extras / f".truth-{k}.npy" for k in truth_spec}
        fh = {k: tmp[k].open("wb") for k in truth_spec}  # streamed .npy files, zipped into truth.npz below
        for k, dt in truth_spec.items():
            np.lib.format.write_array_header_1_0(fh[k], {"descr": np.dtype(dt).str, "fortran_order": False, "shape": (n,)})
        schema = None
        for s in range(0, n, batch_size):
            m = min(batch_size, n - s)
            md = make_metadata(m, seed, s, kind, classes, box, psize_A)
            cols = {k: v for k, v in md.items() if k not in ("blob/path", "blob/idx")}
            if not metadata_only:
                cols[IMAGE_ROW] = np.arange(s, s + m, dtype=np.int64)
            if schema is None:
                schema = pa.schema([arrow_field(k, v.dtype, v.shape[1:]) for k, v in cols.items()])
            w.write_metadata(pa.Table.from_arrays([numpy_to_arrow(v) for v in cols.values()], schema=schema))
            t = make_truth(m, seed, s, kind, classes, junk)
            for k, dt in truth_spec.items():
                fh[k].write(np.ascontiguousarray(md["uid"] if k == "uid" else t[k], dtype=dt).tobytes())
        for f in fh.values():
            f.close()
        with zipfile.ZipFile(extras / "truth.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for k, p in tmp.items():
                zf.write(p, arcname=f"{k}.npy")
                p.unlink()
        sigma = None
        if not metadata_only:
            arr = w.create_images(n, box)
            step = int(arr.chunks[0])
            for s in range(0, n, step):
                m = min(step, n - s)
                arr[s : s + m] = make_particles(m, box, classes, snr, psize_A, kind, seed, ctf, batch_start=s,
                                                  junk=junk)[0]
            sigma = _noise_sigma(seed, box, classes, psize_A, kind, ctf, snr)
        info = _info(n, seed, kind, classes, snr, sigma)
        if junk > 0:
            info["junk"] = junk
        (extras / "truth.json").write_text(json.dumps(info, indent=1))
        return w.commit(psize_A=psize_A, **({"box_px": box} if metadata_only else {}))
