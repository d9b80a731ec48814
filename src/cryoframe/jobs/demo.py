"""The end-to-end tour behind ``cryoframe demo``: runs in seconds on 2 cores with no input data.

1. synthesize a cryoSPARC-like project (particles .cs + passthrough .cs + .mrcs stacks) and a
   RELION 3.1 project (.star + .mrcs) with known ground truth;
2. import both into stores (images streamed into Zarr);
3. query across the metadata (a high-defocus, high-error subset);
4. export the subset to .star and the whole set to .cs;
5. re-import both exports and check them against the originals (uids, fields, images).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryoframe.errors import CryoframeError

__all__ = ["run_demo"]


def run_demo(workdir: str | os.PathLike[str] | None = None, *, n: int = 2000, box: int = 64,
             seed: int = 0) -> dict[str, Any]:
    """Run the tour in ``workdir`` (default ``./cryoframe-demo``, replaced if it exists)."""
    from cryoframe.query.expr import filter_store
    from cryoframe.storage.exporters import export_cs, export_star
    from cryoframe.storage.importers import import_cs, import_star
    from cryoframe.synthetic import write_cs_dataset, write_star_dataset

    t0 = time.perf_counter()
    wd = Path(workdir or "cryoframe-demo").absolute()
    if wd.exists():
        if not (wd / ".cryoframe-demo").exists():
            raise CryoframeError(f"{wd}: exists and is not a previous demo directory; choose another --workdir")
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    (wd / ".cryoframe-demo").write_text("created by cryoframe demo\n")
    log: list[str] = []

    def say(msg: str) -> None:
        log.append(f"[{time.perf_counter() - t0:5.1f}s] {msg}")

    cs = write_cs_dataset(wd / "cryosparc_project", n, box=box, classes=4, snr=0.1, seed=seed, kind="3d")
    say(f"synthesized cryoSPARC project: {cs.particles.relative_to(wd)} + passthrough, {len(cs.stacks)} .mrcs stacks")
    rel = write_star_dataset(wd / "relion_project", max(200, n // 4), box=box, classes=4, snr=0.1,
                             seed=seed + 1, kind="3d")
    say(f"synthesized RELION 3.1 project: {rel.particles.relative_to(wd)}")

    store = import_cs(cs.particles, wd / "particles.cf", passthrough=[cs.passthrough] if cs.passthrough else [],
                      project_dir=cs.directory)
    say(f"imported {store.n} particles, {len(store.fields)} fields, images {store.n}x{store.box}x{store.box} "
        f"-> {store.path.name}")
    rstore = import_star(rel.particles, wd / "relion.cf", project_dir=rel.directory)
    optics = rstore.optics()
    n_optics = 0 if optics is None else optics.num_rows
    say(f"imported RELION .star: {rstore.n} particles, optics groups: {n_optics} -> {rstore.path.name}")

    df = store.metadata(["ctf/df1_A", "alignments3D/error"]).describe().compute()
    med_df = float(store.metadata(["ctf/df1_A"])["ctf/df1_A"].astype("float64").quantile(0.5).compute())
    med_err = float(df.loc["50%", "alignments3D/error"])
    where = f"`ctf/df1_A` > {med_df:.0f} and `alignments3D/error` > {med_err:.3f}"
    hard = filter_store(store, wd / "hard.cf", where)
    say(f"query {where!r}: {hard.n} of {store.n} particles -> {hard.path.name} (images referenced, not copied)")

    star = export_star(hard, wd / "hard.star")
    say(f"exported subset to RELION 3.1 .star: {star.name}")
    csout = export_cs(store, wd / "particles_out.cs")
    say(f"exported all to cryoSPARC .cs: {csout.name}")

    back_star = import_star(star, wd / "hard_reimported.cf", project_dir=cs.directory)
    back_cs = import_cs(csout, wd / "particles_reimported.cf", project_dir=cs.directory)
    ok_uid = np.array_equal(back_star.table(["uid"]).column(0).to_numpy(), hard.table(["uid"]).column(0).to_numpy())
    ok_img = np.array_equal(back_star.images()[:64].compute(), hard.images()[:64].compute())
    a, b = store.table(), back_cs.table()
    ok_cs = all(a.column(f).equals(b.column(f)) for f in store.fields)
    if not (ok_uid and ok_img and ok_cs):
        raise CryoframeError(f"demo round trip check failed (uids {ok_uid}, images {ok_img}, .cs fields {ok_cs})")
    say(f"re-imported both exports: uids, images and all {len(store.fields)} .cs fields identical")
    return {"workdir": str(wd), "log": log, "stores": [str(p) for p in sorted(wd.glob("*.cf"))],
            "exports": [str(star), str(csout)], "seconds": time.perf_counter() - t0}
