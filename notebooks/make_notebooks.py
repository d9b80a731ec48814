"""Build and execute the walkthrough notebooks (run from the repository root or notebooks/):

    python notebooks/make_notebooks.py [03_3d.ipynb ...]

The tests re-execute the committed notebooks (tests/test_notebooks.py) so they cannot rot.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = '''import os, tempfile
from pathlib import Path
from cryoframe import api
from cryoframe.testing import write_cs_dataset, write_star_dataset
work = Path(os.environ.get("CRYOFRAME_NB_WORKDIR") or tempfile.mkdtemp(prefix="cryoframe-nb-"))
print("working in", work)'''

CURATION = [
    ("md", "# Curation tour: synth → import → query across jobs → subset by statistic → export\n\n"
           "Everything here uses `cryoframe.api`, the functions behind the CLI verbs. The data are synthetic "
           "(seeded, with ground truth), so this runs anywhere in under a minute."),
    ("code", SETUP),
    ("md", "## 1. A cryoSPARC-like project: particles + passthrough `.cs` and `.mrcs` stacks"),
    ("code", '''cs = write_cs_dataset(work / "P1", 3000, box=32, classes=4, snr=0.1, kind="3d", seed=0)
store = api.import_(cs.particles, work / "j2.cf", passthrough=[cs.passthrough], project_dir=cs.directory)
info = api.info(store)
print(info["n_particles"], "particles, box", info["box_px"], "px, images", info["images"]["shape"])
print([f["name"] for f in info["fields"]][:12], "...")'''),
    ("md", "## 2. Query: a lazy dask dataframe with pyarrow dtypes, cryoSPARC field names"),
    ("code", '''ddf = store.metadata(["ctf/df1_A", "alignments3D/error", "alignments3D/alpha_min"])
ddf.describe().compute()'''),
    ("code", '''hard = api.query(store, "`ctf/df1_A` > 17000 and `alignments3D/alpha_min` < 0.8", out=work / "hard.cf")
print(hard.n, "particles; images shared with the parent:", hard.images_path() == store.images_path())
print([step["op"] for step in hard.lineage])'''),
    ("md", "## 3. One question across jobs: join a second job on `uid`"),
    ("code", '''rerun = api.query(store, None, columns=["alignments3D/error", "alignments3D/pose"], out=work / "rerun.cf")
api.query(store, "`alignments3D/error@j2` > 9000", join=[rerun], head=5)'''),
    ("md", "## 4. Subset by statistic: a 2-component GMM on the per-particle scale"),
    ("code", '''res = api.subset(store, work / "by_scale", by="scale", mode="gmm", components=2, seed=0)
for s in res.summary["sets"]:
    print(f"set {s['index']}: {s['count']} particles, mean scale {s['mean']:.3f}")
print("GMM means", [round(m, 3) for m in res.summary["gmm"]["means"]], "weights",
      [round(w, 3) for w in res.summary["gmm"]["weights"]])'''),
    ("code", '''from IPython.display import Image
Image(filename=str(work / "by_scale" / "plots" / "histogram.png"))'''),
    ("md", "## 5. Export the good set back to RELION and cryoSPARC"),
    ("code", '''good = res.sets[1]
star = api.export(good, work / "good.star")
csout = api.export(good, work / "good.cs")
import starfile
blocks = starfile.read(star, always_dict=True)
print(list(blocks), len(blocks["particles"]), "particles")
blocks["particles"][["rlnImageName", "rlnDefocusU", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].head()'''),
]

CLUSTER = [
    ("md", "# The same curation on a Dask `LocalCluster`\n\n"
           "cryoframe's queries and the GMM are Dask graphs: with a `distributed.Client` active they run on its "
           "workers. Here: two worker processes on this machine (127.0.0.1); on a cluster use "
           "`--scheduler tcp://HOST:8786` or `--scheduler slurm` from the CLI."),
    ("code", SETUP),
    ("code", '''from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0")
client = Client(cluster)
print("dashboard:", client.dashboard_link)'''),
    ("code", '''store = api.synth(work / "toy.cf", n=200_000, box=32, classes=4, kind="3d", metadata_only=True, seed=1)
ddf = store.metadata(["alignments3D/error", "ctf/df1_A"])
print(ddf.npartitions, "partitions;", ddf["alignments3D/error"].mean().compute())'''),
    ("code", '''from cryoframe.algorithms import GaussianMixture
gmm = GaussianMixture(n_components=2, random_state=0).fit(store.metadata(["alignments3D/alpha_min"]))
print("means", gmm.means_.ravel(), "weights", gmm.weights_, "iterations", gmm.n_iter_)'''),
    ("code", '''res = api.subset(store, work / "by_error", by="error3d", mode="gmm", components=2, seed=0, plots=False)
[(s["index"], s["count"], round(s["mean"], 1)) for s in res.summary["sets"]]'''),
    ("code", '''client.close()
cluster.close()'''),
]

THREE_D = [
    ("md", "# 3D tour: a RELION extraction without poses → ab-initio → mask → 3D classification → reconstruct → export\n\n"
           "The data: 2000 particles of one object in two states (a domain present or not), projected at random "
           "poses with CTF and noise, written as a RELION `.star` + `.mrcs` with the angles and origins removed "
           "(what an extraction job gives). Ground truth is kept aside to score each step. About three minutes on "
           "two cores, most of it the ab-initio SGD."),
    ("code", SETUP),
    ("md", "## 1. A `.star` + `.mrcs` with no `rlnAngle*` / `rlnOrigin*` columns, imported"),
    ("code", '''import starfile
from cryoframe.testing.states3d import write_state_store
truth = write_state_store(work / "states.cf", 2000, box=32, k=2, snr=1.0, seed=0, psize_A=4.0)
(work / "relion").mkdir(exist_ok=True)
blocks = starfile.read(api.export(work / "states.cf", work / "relion" / "posed.star", images=True), always_dict=True)
posed = [c for c in blocks["particles"].columns if c.startswith(("rlnAngle", "rlnOrigin"))]
blocks["particles"] = blocks["particles"].drop(columns=posed)
starfile.write(blocks, work / "relion" / "particles.star")
print("removed", posed)
clean = api.import_(work / "relion" / "particles.star", work / "clean.cf")
print(clean.n, "particles; any 3D pose field:", any(f.startswith("alignments3D/pose") for f in clean.fields))'''),
    ("md", "## 2. Ab-initio reconstruction (one class, cryoSPARC's SGD schedule, seeded)"),
    ("code", '''import json
ab = api.abinitio(clean, work / "abinit.cf", classes=1, seed=0)
model = json.loads((ab.extras_dir() / "model.json").read_text())
print("map:", model["classes"][0]["volume"], "FSC 0.143 of its half maps:", round(model["classes"][0]["resolution_A"], 1), "Å")
print("iterations:", len(model["history"]), "last:", {k: model["history"][-1][k] for k in ("phase", "resolution_A", "minibatch")})'''),
    ("code", '''import numpy as np
from scipy.spatial.transform import Rotation
from cryoframe.algorithms.abinitio.evaluate import pose_errors
est = Rotation.from_rotvec(np.stack(ab.table(["alignments3D/pose"]).column(0).to_numpy(zero_copy_only=False)))
err = pose_errors(est.as_matrix(), Rotation.from_rotvec(truth["pose"]).as_matrix())
print(f"poses against the truth (after the best global rotation; hand: {err['hand']}): median {err['median_deg']:.1f} deg, "
      f"{100 * err['within_10_deg']:.0f}% within 10 deg")'''),
    ("code", '''from IPython.display import Image
Image(filename=str(ab.extras_dir() / "slices.png"))'''),
    ("md", "## 3. A solvent mask from the ab-initio map (as `relion_mask_create`)"),
    ("code", '''import mrcfile
vol = mrcfile.read(ab.extras_dir() / "class_000.mrc")
level = float(np.percentile(vol, 90))  # the densest tenth of the box
m = api.mask(ab.extras_dir() / "class_000.mrc", work / "mask.mrc", threshold=level, extend_px=2, soft_edge_px=3)
print(f"threshold {level:.3g}: mask covers {100 * mrcfile.read(work / 'mask.mrc').mean():.0f}% of the box")'''),
    ("md", "## 4. 3D classification at the ab-initio poses: do the two states separate?"),
    ("code", '''from sklearn.metrics import adjusted_rand_score
c3d = api.class3d(ab, work / "c3d.cf", classes=2, solvent_mask=work / "mask.mrc", seed=0)
labels = c3d.table(["alignments3D/class"]).column(0).to_numpy()
print("class sizes", np.bincount(labels).tolist(), "adjusted Rand index against the true states:",
      round(adjusted_rand_score(truth["class"], labels), 3))'''),
    ("code", '''Image(filename=str(c3d.extras_dir() / "class_slices.png"))'''),
    ("md", "## 5. Reconstruct each class with half maps and FSC"),
    ("code", '''for k in range(2):
    rec = api.reconstruct(c3d.extras_dir() / "classes" / f"class_{k:03d}.cf", work / f"rec_{k}", plots=False)
    print(f"class {k}: {rec['n_particles']} particles, FSC 0.143 {rec['resolution_A']['0.143']:.1f} Å -> {rec['files']['map']}")'''),
    ("md", "## 6. Back to RELION: angles, origins and classes in the `.star`"),
    ("code", '''star = api.export(c3d, work / "c3d.star")
parts = starfile.read(star, always_dict=True)["particles"]
parts[["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
       "rlnClassNumber"]].head()'''),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


NOTEBOOKS = {"01_curation.ipynb": CURATION, "02_cluster.ipynb": CLUSTER, "03_3d.ipynb": THREE_D}

if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or NOTEBOOKS:  # names given: only those
        cells = NOTEBOOKS[name]
        nb = execute(build(cells))
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
