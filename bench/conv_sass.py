"""FFMA share of the conv kernels' hot loops, from the compiled SASS (no GPU needed).

    python bench/conv_sass.py [kernels/conv2d.cu] [--arch sm_90]

Compiles the file with ``nvcc -cubin -lineinfo -std=c++17 -ftz=true`` and disassembles
it with ``cuobjdump -sass`` ($NVCC / $CUOBJDUMP or on PATH; pip
``nvidia-cuda-cuobjdump`` provides cuobjdump). For every entry point:

* hot loop: the back edge whose address range holds the most FFMA/DFMA (ties: the
  one with vector global loads, i.e. the vector path of a kernel that also has a
  scalar-gather instantiation);
* static: every instruction in that range, FMA share;
* path: the common path through one trip of the loop (inner back edges dropped),
  chosen as the one with the most FMA, then vector loads, then shared stores, then
  the fewest instructions: a k-tile on the vector path with every load in bounds.

This reproduces the review's 428-instruction / 59.8 % figure for the old
``conv2d_fwd_f32`` (kernel-review.md, section 3.2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
TARGET = re.compile(r"0x([0-9a-f]+)")


def functions(sass: str) -> dict[str, list[tuple]]:
    funcs, name = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = INSTR.search(line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2) or "", m.group(3), m.group(4)))
    return funcs


def is_fma(op: str) -> bool:
    return op.startswith(("FFMA", "DFMA"))


def is_vload(op: str) -> bool:
    return op.startswith("LDG") and ".128" in op


def hot_loop(instrs: list[tuple]) -> dict:
    index = {a: i for i, (a, *_) in enumerate(instrs)}
    best = None
    for i, (a, _, op, args) in enumerate(instrs):
        m = TARGET.search(args) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) <= a:
            t = index[int(m.group(1), 16)]
            body = instrs[t : i + 1]
            score = (sum(is_fma(o) for _, _, o, _ in body), sum(is_vload(o) for _, _, o, _ in body))
            if best is None or score > best[0]:
                best = (score, t, i)
    (fma, _), t, end = best
    body = instrs[t : end + 1]
    leaders = {0}
    for j, (_, _, op, args) in enumerate(body):
        if op.startswith(("BRA", "EXIT", "RET", "BSSY", "BSYNC", "WARPSYNC")):
            leaders.add(j + 1)
        m = TARGET.search(args) if op.startswith(("BRA", "BSSY")) else None
        if m and index.get(int(m.group(1), 16)) is not None:
            tgt = index[int(m.group(1), 16)]
            if t <= tgt <= end:
                leaders.add(tgt - t)
    starts = sorted(x for x in leaders if x < len(body))
    blocks = [
        (s, starts[k + 1] if k + 1 < len(starts) else len(body)) for k, s in enumerate(starts)
    ]
    block_at = {s: k for k, (s, _) in enumerate(blocks)}
    succ = {k: [] for k in range(len(blocks))}
    for k, (s, e) in enumerate(blocks):
        _, pred, op, args = body[e - 1]
        fall = k + 1 < len(blocks)
        if op.startswith("BRA"):
            m = TARGET.search(args)
            tgt = index.get(int(m.group(1), 16)) if m else None
            if tgt is not None and t <= tgt <= end and tgt - t > s:
                succ[k].append(block_at[tgt - t])
            if pred and fall:
                succ[k].append(k + 1)
        elif not op.startswith(("EXIT", "RET")) and fall:
            succ[k].append(k + 1)

    def score(k):
        ops = body[slice(*blocks[k])]
        return (
            sum(is_fma(o) for _, _, o, _ in ops),
            sum(is_vload(o) for _, _, o, _ in ops),
            sum(o.startswith("STS") for _, _, o, _ in ops),
            -len(ops),
        )

    best_to = {0: (score(0), [0])}
    for k in range(len(blocks)):
        if k not in best_to:
            continue
        acc, path = best_to[k]
        for nk in succ[k]:
            cand = (tuple(x + y for x, y in zip(acc, score(nk))), path + [nk])
            if nk not in best_to or cand[0] > best_to[nk][0]:
                best_to[nk] = cand
    (pf, pv, pst, pn), path = best_to.get(len(blocks) - 1, ((0, 0, 0, 0), []))
    ops = [body[j] for k in path for j in range(*blocks[k])]
    return dict(
        static=len(body),
        static_fma=fma,
        path=-pn,
        path_fma=pf,
        lds=sum(o.startswith("LDS") for _, _, o, _ in ops),
        sts=pst,
        ldg128=pv,
    )


def tool(env: str, name: str) -> str:
    found = os.environ.get(env) or shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: set ${env} or put it on PATH")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    ap.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    ap.add_argument(
        "source",
        nargs="?",
        default=str(Path(__file__).parents[1] / "kernels" / "conv2d.cu"),
        help="The CUDA source to compile and read (default: kernels/conv2d.cu).",
    )
    ap.add_argument("--arch", default="sm_90", help="The GPU architecture to compile for.")
    args = ap.parse_args(argv)
    nvcc, cuobjdump = tool("NVCC", "nvcc"), tool("CUOBJDUMP", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [nvcc, "-cubin", f"-arch={args.arch}", "-lineinfo", "-std=c++17", "-ftz=true"]
        r = subprocess.run(
            [*cmd, "-Xptxas", "-v", "-o", str(cubin), args.source], capture_output=True, text=True
        )
        if r.returncode:
            sys.exit(r.stderr)
        regs = dict(
            re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", r.stderr, re.S)
        )
        sass = subprocess.run(
            [cuobjdump, "-sass", str(cubin)], capture_output=True, text=True
        ).stdout
    print(
        f"{'kernel':24s} {'regs':>4s} {'static':>14s} {'path (one k-tile trip)':>30s}  LDS STS LDG.128"
    )
    for name, instrs in sorted(functions(sass).items()):
        h = hot_loop(instrs)
        print(
            f"{name:24s} {regs.get(name, '?'):>4s} {h['static']:5d} {100 * h['static_fma'] / h['static']:6.1f} % "
            f"{h['path']:6d} instr {h['path_fma']:5d} FMA {100 * h['path_fma'] / max(1, h['path']):6.1f} %"
            f"  {h['lds']:3d} {h['sts']:3d} {h['ldg128']:3d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
