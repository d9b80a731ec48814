"""Import benchmark: cryoframe `.cs` import vs cryosparc-tools `Dataset.load`, and reading two
columns back from the store vs loading the `.cs`.

Each measurement runs in a fresh subprocess (so peak RSS is that operation's own), timed inside
the process around the call only (interpreter start and imports excluded), best of ``--repeat``.
Prints ratios and appends a section to ``bench/RESULTS.md``.

    python bench/bench_import.py --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, record

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"

SNIPPETS = {
    "dataset_load": """
from cryosparc.dataset import Dataset
t = time.perf_counter(); d = Dataset.load(CS); n = len(d); dt = time.perf_counter() - t
""",
    "dataset_load_2col": """
from cryosparc.dataset import Dataset
t = time.perf_counter(); d = Dataset.load(CS, fields=["uid", "alignments3D/error", "ctf/df1_A"])
a = d["alignments3D/error"]; b = d["ctf/df1_A"]; dt = time.perf_counter() - t
""",
    "cryoframe_import": """
from cryoframe.storage import import_cs
t = time.perf_counter(); s = import_cs(CS, STORE, metadata_only=True, overwrite=True); dt = time.perf_counter() - t
""",
    "cryoframe_2col": """
from cryoframe.storage import ParticleStore
t = time.perf_counter(); s = ParticleStore(STORE); tb = s.table(["uid", "alignments3D/error", "ctf/df1_A"])
a = tb.column(1).to_numpy(); b = tb.column(2).to_numpy(); dt = time.perf_counter() - t
""",
}

RUNNER = """
import json, resource, sys, time
CS, STORE = sys.argv[1], sys.argv[2]
{body}
print(json.dumps({{"seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(name: str, cs: Path, store: Path, repeat: int) -> dict[str, float]:
    best: dict[str, float] | None = None
    for _ in range(repeat):
        code = RUNNER.format(body=SNIPPETS[name])
        r = subprocess.run([sys.executable, "-c", code, str(cs), str(store)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{r.stderr}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        if best is None or res["seconds"] < best["seconds"]:
            best = res
    assert best is not None
    return best


def ensure_dataset(rows: int) -> Path:
    from cryoframe.testing import write_cs_dataset

    d = WORK / f"cs_{rows}"
    cs = d / "J2" / "J2_particles.cs"
    if not cs.exists():
        t = time.perf_counter()
        write_cs_dataset(d, rows, passthrough=False, images=False, kind="3d", classes=4, seed=0)
        print(f"  generated {rows} rows in {time.perf_counter() - t:.1f} s ({cs.stat().st_size / 1e6:.0f} MB)")
    return cs


def main() -> None:
    import shlex

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    import cryosparc
    import pyarrow

    import cryoframe

    lines = [f"\n## Import (`bench/bench_import.py`), {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {machine()}. cryoframe {cryoframe.__version__}, cryosparc-tools "
             f"{getattr(cryosparc, '__version__', '?')}, pyarrow {pyarrow.__version__}. Best of {args.repeat}, "
             "each in a fresh process; time excludes interpreter start and imports.\n",
             "Two columns: uid + `alignments3D/error` + `ctf/df1_A` on both sides (Dataset.load(fields=...) "
             "always loads uid). The import's lineage hashes the whole input (BLAKE3, background thread).\n",
             "| rows | .cs MB | Dataset.load s (RSS MB) | cryoframe import s (RSS MB) | import / load | "
             "2 cols: Dataset.load(fields) s | 2 cols: store s | load(fields) / store |",
             "|---|---|---|---|---|---|---|---|"]
    for rows in args.rows:
        print(f"rows={rows}")
        cs = ensure_dataset(rows)
        store = WORK / f"cs_{rows}.cf"
        load = measure("dataset_load", cs, store, args.repeat)
        imp = measure("cryoframe_import", cs, store, args.repeat)
        load2 = measure("dataset_load_2col", cs, store, args.repeat)
        read2 = measure("cryoframe_2col", cs, store, args.repeat)
        r_imp = imp["seconds"] / load["seconds"]
        r_read_f = load2["seconds"] / read2["seconds"]
        print(f"  Dataset.load {load['seconds']:.3f} s ({load['maxrss_mb']:.0f} MB)  "
              f"cryoframe import {imp['seconds']:.3f} s ({imp['maxrss_mb']:.0f} MB)  ratio {r_imp:.2f}x (goal <= 1.5)")
        print(f"  two columns: store {read2['seconds']:.4f} s vs Dataset.load(fields=...) {load2['seconds']:.3f} s "
              f"-> {r_read_f:.1f}x")
        lines.append(
            f"| {rows:,} | {cs.stat().st_size / 1e6:.0f} | {load['seconds']:.3f} ({load['maxrss_mb']:.0f}) | "
            f"{imp['seconds']:.3f} ({imp['maxrss_mb']:.0f}) | {r_imp:.2f} | {load2['seconds']:.3f} | "
            f"{read2['seconds']:.4f} | {r_read_f:.1f} |")
    lines.append(f"\nCommand: `python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
