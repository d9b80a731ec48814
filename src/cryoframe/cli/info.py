"""Describe a store: particle count, box, pixel size, fields, images, optics and lineage."""

from __future__ import annotations

import argparse
import json

from cryoframe import api


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    d = api.info(args.store)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"store      {d['path']}")
    print(f"particles  {d['n_particles']}")
    if d.get("view"):
        v = d["view"]
        extra = ", ".join(v["added"] + v["computed"])
        print(f"view of    {v['parent']} ({v['parent_hash']}): {v['n_selected']} of {v['n_parent']} rows "
              f"({v['encoding']}){'; adds ' + extra if extra else ''}")
    print(f"box        {d['box_px']} px   pixel size {d['psize_A']} Å")
    if d["images"]:
        shared = " (shared with parent)" if d["images"]["shared_with_parent"] else ""
        print(f"images     {d['images']['shape']} {d['images']['dtype']} chunks {d['images']['chunks']}{shared}")
    else:
        print("images     none")
    if d["optics_groups"] is not None:
        print(f"optics     {d['optics_groups']} group(s)")
    print(f"fields     {len(d['fields'])}")
    for f in d["fields"]:
        shape = f"[{','.join(map(str, f['shape']))}]" if f["shape"] else ""
        unit = f"  ({f['unit']})" if f["unit"] else ""
        print(f"  {f['name']:<42} {f['dtype']}{shape}{unit}")
    print("lineage")
    for i, st in enumerate(d["lineage"]):
        print(f"  {i}. {st['op']} {st['created']} {json.dumps(st['params'])}")
    return 0
