"""Build and execute the walkthrough notebooks (run from the repository root or notebooks/):

    python notebooks/make_notebooks.py

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


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


if __name__ == "__main__":
    for name, cells in (("01_curation.ipynb", CURATION), ("02_cluster.ipynb", CLUSTER)):
        nb = execute(build(cells))
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
