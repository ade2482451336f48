#!/usr/bin/env python3
"""Checks that every workspace crate's `rust-version` is the true minimum: exactly the
highest `rust-version` that its locked normal and build dependencies declare, and no
higher than the toolchain CI builds with. (This machine has one toolchain, so an
actual build with the minimum compiler cannot be run here.)"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple((parts + [0, 0])[:3])


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
rustc = subprocess.run(["rustc", "--version"], check=True, capture_output=True, text=True).stdout
toolchain = version(rustc.split()[1].split("-")[0])

failed = False
for member in meta["workspace_members"]:
    crate = packages[member]
    declared = crate.get("rust_version")
    # Normal and build dependencies only: what a user of the crate compiles.
    seen, stack, needed, needed_by = set(), [member], (1, 0), "-"
    while stack:
        node = nodes[stack.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds <= {"dev"} or dep["pkg"] in seen:
                continue
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])
            rv = packages[dep["pkg"]].get("rust_version")
            if rv and version(rv) > needed:
                needed, needed_by = version(rv), packages[dep["pkg"]]["name"]
    shown = ".".join(map(str, needed))
    if declared is None or version(declared) < needed:
        print(f"{crate['name']}: rust-version {declared} is below {shown}, which {needed_by} needs")
        failed = True
    elif version(declared) > needed:
        print(f"{crate['name']}: rust-version {declared} is above the true minimum {shown} ({needed_by})")
        failed = True
    elif version(declared) > toolchain:
        print(f"{crate['name']}: rust-version {declared} is above the CI toolchain {rustc.strip()}")
        failed = True
    else:
        print(f"{crate['name']}: rust-version {declared} (dependencies need {shown}: {needed_by})")
sys.exit(1 if failed else 0)
