"""Registers, spills and static shared memory of every CUDA kernel, from ptxas's own report.

Needs no GPU: configure a build with `-DCMAKE_CUDA_FLAGS=-Xptxas=-v`, build it with its output in a
log, then read the log:

    cmake -S . -B build-ptxas -DSEQMIX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_FLAGS=-Xptxas=-v
    cmake --build build-ptxas -j2 > ptxas.log 2>&1
    python3 scripts/ptxas_report.py ptxas.log [--spills-only]

One line per kernel instance (demangled, first occurrence per architecture): registers per thread,
spill stores / loads in bytes, static shared memory (the kernels' dynamic shared memory is set at
launch and is not in ptxas's report). Spills and a register count that caps occupancy are what to
look at before a kernel goes to the device.
"""

import argparse
import re
import shutil
import subprocess


def parse(text):
    rows, kernel, arch, spill = [], None, None, (0, 0)
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line)
        if m:
            kernel, arch, spill = m.group(1), m.group(2), (0, 0)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel:
            spill = (int(m.group(1)), int(m.group(2)))
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m and kernel:
            rows.append((kernel, arch, int(m.group(1)), spill, int(m.group(2) or 0)))
            kernel = None
    return rows


def demangle(names):
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def strip_parameters(name):
    """Drops the trailing (parameter list), whose types may hold parentheses of their own."""
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i] if name.endswith(")") else name
    return name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--spills-only", action="store_true")
    args = ap.parse_args()
    with open(args.log, errors="replace") as fh:
        rows = parse(fh.read())
    names = demangle([r[0] for r in rows])
    seen = set()
    print(f"{'arch':>7} {'regs':>4} {'spill st/ld':>11} {'smem':>6}  kernel")
    for (_, arch, regs, (st, ld), smem), name in zip(rows, names):
        name = re.sub(r"seqmix::cuda::(\w+::)?(\(anonymous namespace\)::)?", "", name)
        name = strip_parameters(name)
        if (arch, name) in seen or (args.spills_only and st == 0 and ld == 0):
            continue
        seen.add((arch, name))
        print(f"{arch:>7} {regs:4d} {st:5d}/{ld:5d} {smem:6d}  {name}")


if __name__ == "__main__":
    main()
