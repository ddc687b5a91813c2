"""The differential fuzzer against PyTorch (tests/fuzz): a bounded run in CI, on cpu
and on the emu device, and proof that it catches a planted wrong derivative.
``python -m tests.fuzz N`` runs more.

Each run happens in a fresh interpreter, so nothing a fuzz program leaves behind (a
planted bug, a device switch, counted memory) can reach the other tests."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = r"""
import json, sys
from tests import fuzz
n, seed, device, ops, planted = json.loads(sys.argv[1])
if planted:
    with fuzz.plant_bug(planted):
        res = fuzz.run_fuzz(n, seed=seed, device=device, ops=ops)
else:
    res = fuzz.run_fuzz(n, seed=seed, device=device, ops=ops)
print("RESULT" + json.dumps({
    "programs": res.programs, "mismatches": res.mismatches[:10], "summary": res.summary(),
    "ops": sorted(res.op_counts), "primitives": sorted(res.primitives),
    "all_ops": len(fuzz.runner.ALL_OPS),
}))
"""


def _fuzz(n, seed, device="cpu", ops=None, planted=None):
    env = dict(os.environ, GPUGRAD_DEVICE="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps([n, seed, device, ops, planted])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0 and "RESULT" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT", 1)[1])


def test_fuzz_programs_agree_with_pytorch():
    res = _fuzz(320, seed=0)
    assert res["programs"] >= 300, res["summary"]
    assert not res["mismatches"], "\n".join([res["summary"], *res["mismatches"]])
    # the run exercises the whole op table and the faces
    assert len(res["ops"]) == res["all_ops"], res["summary"]
    assert {"lstm", "conv2d", "matmul", "prod", "gelu_erf", "setitem"} <= set(res["primitives"])


@pytest.mark.skipif(shutil.which("g++") is None, reason="the emu device needs g++")
def test_fuzz_programs_on_the_emu_device():
    res = _fuzz(16, seed=5000, device="emu")
    assert res["programs"] >= 12 and not res["mismatches"], "\n".join(res["mismatches"])


@pytest.mark.parametrize(
    "prim,ops",
    [
        ("sin", ["u:sin", "b:add", "u:tanh"]),  # a VJP used by every face
        ("multiply", ["b:multiply", "u:cos"]),  # a primitive with a raw fast rule
        ("lstm", ["k:lstm", "u:sin"]),  # a whole-sequence kernel VJP
    ],
)
def test_a_planted_wrong_vjp_is_caught(prim, ops):
    res = _fuzz(12, seed=77, ops=ops, planted=prim)
    assert res["programs"] and len(res["mismatches"]) >= res["programs"] // 2, res["summary"]
    clean = _fuzz(12, seed=77, ops=ops)
    assert not clean["mismatches"]
