"""The differential fuzzer against PyTorch (tests/fuzz): a bounded run in CI, on cpu
and on the emu device, and proof that it catches a planted wrong derivative.
``python -m tests.fuzz N`` runs more."""

import shutil

import pytest

fuzz = pytest.importorskip("tests.fuzz")


def test_fuzz_programs_agree_with_pytorch():
    res = fuzz.run_fuzz(320, seed=0)
    assert res.programs >= 300, res.summary()
    assert not res.mismatches, "\n".join([res.summary(), *res.mismatches[:10]])
    # the run exercises the whole op table and the faces
    assert len(res.op_counts) == len(fuzz.runner.ALL_OPS), res.summary()
    assert {"lstm", "conv2d", "matmul", "prod", "gelu_erf", "setitem"} <= res.primitives


@pytest.mark.skipif(shutil.which("g++") is None, reason="the emu device needs g++")
def test_fuzz_programs_on_the_emu_device():
    res = fuzz.run_fuzz(16, seed=5000, device="emu")
    assert res.programs >= 12 and not res.mismatches, "\n".join(res.mismatches[:10])


@pytest.mark.parametrize(
    "prim,ops",
    [
        ("sin", ["u:sin", "b:add", "u:tanh"]),  # a VJP used by every face
        ("multiply", ["b:multiply", "u:cos"]),  # a primitive with a raw fast rule
        ("lstm", ["k:lstm", "u:sin"]),  # a whole-sequence kernel VJP
    ],
)
def test_a_planted_wrong_vjp_is_caught(prim, ops):
    with fuzz.plant_bug(prim):
        res = fuzz.run_fuzz(12, seed=77, ops=ops)
    assert res.programs and len(res.mismatches) >= res.programs // 2, res.summary()
    clean = fuzz.run_fuzz(12, seed=77, ops=ops)
    assert not clean.mismatches
