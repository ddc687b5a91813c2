"""The example and bench scripts behave as command-line tools: ``--help`` exits 0 at
once (before importing gpugrad, NumPy or any optional package) with complete
sentences, the scripts run without tqdm and matplotlib, and bench results never
replace an existing file by default."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py"))
SCRIPTS += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py"))
HEAVY = ("gpugrad", "numpy", "cupy", "torch", "matplotlib", "sklearn", "tqdm", "scipy")

# Runs a script's --help in a fresh interpreter, recording the ArgumentParser it used.
PROBE = r"""
import argparse, json, runpy, sys
script, heavy_names = sys.argv[1], set(sys.argv[2:])
parsers = []
original = argparse.ArgumentParser.parse_known_args
def recording(self, *args, **kwargs):
    parsers.append(self)
    return original(self, *args, **kwargs)
argparse.ArgumentParser.parse_known_args = recording
sys.argv = [script, "--help"]
code = None
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & heavy_names)
p = parsers[0] if parsers else None
report = {
    "code": code,
    "heavy": heavy,
    "description": p.description if p else None,
    "helps": {", ".join(a.option_strings) or a.dest: a.help for a in (p._actions if p else [])},
}
sys.__stdout__.write("\nPROBE" + json.dumps(report))
"""


def _probe(script):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, script, *HEAVY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only: the check for "at once" is the import list
    )
    assert "PROBE" in out.stdout, out.stdout + out.stderr
    help_text, report = out.stdout.rsplit("PROBE", 1)
    return help_text, json.loads(report)


def _is_sentence(text):
    text = (text or "").strip()
    return len(text.split()) >= 3 and text[0].isupper() and text.endswith(".")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_at_once_with_complete_sentences(script):
    help_text, report = _probe(script)
    assert report["code"] in (0, None), f"{script} --help exited with {report['code']}"
    assert report["heavy"] == [], f"{script} --help imported {report['heavy']} before exiting"
    assert "usage:" in help_text
    first = report["description"].strip().split("\n\n")[0]
    assert _is_sentence(" ".join(first.split())), f"{script}: description {first!r}"
    for option, text in report["helps"].items():
        assert _is_sentence(text), f"{script} {option}: help {text!r} is not a sentence"


def _run_without_optional_packages(script, *argv):
    """Run ``script`` with tqdm and matplotlib unimportable."""
    code = (
        "import runpy, sys\n"
        "for name in ('tqdm', 'matplotlib'):\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        f"sys.argv = [{script!r}, *{list(argv)!r}]\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "GPUGRAD_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )


def test_training_example_degrades_without_tqdm_and_matplotlib(tmp_path):
    plot = tmp_path / "loss.png"
    out = _run_without_optional_packages(
        "examples/xor_mlp.py", "--steps", "20", "--plot", str(plot)
    )
    assert out.returncode == 0, out.stderr
    assert "XOR MLP: 20/20" in out.stdout  # plain progress lines instead of a bar
    assert "matplotlib is not installed, so no plot was written" in out.stdout
    assert not plot.exists()
    assert "final loss" in out.stdout


def test_examples_say_where_they_wrote_files_and_are_seeded(tmp_path):
    outputs = []
    for _ in range(2):
        plot = tmp_path / "xor.png"
        out = _run_without_optional_packages("examples/xor_mlp.py", "--steps", "5", "--plot", "")
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    assert outputs[0] == outputs[1]  # seeded: the same run twice
    pytest.importorskip("matplotlib")
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['examples/xor_mlp.py', '--steps', '3', '--plot', {str(plot)!r}]\n"
        "sys.modules['tqdm'] = None\n"
        "runpy.run_path('examples/xor_mlp.py', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert f"The loss curve was written to {plot.resolve()}." in out.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_bench_results_never_replace_an_existing_file(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = tmp_path / "gpu-card.json"
    assert module.fresh_path(target, overwrite=False) == target  # nothing there yet
    target.write_text("{}")
    other = module.fresh_path(target, overwrite=False)
    assert other != target and other.parent == tmp_path and other.name.startswith("gpu-card-")
    assert other.suffix == ".json"
    assert module.fresh_path(target, overwrite=True) == target
    # the default output folder is the repository's bench/results
    args = module.build_parser().parse_args([])
    assert args.out == ROOT / "bench" / "results" and not args.overwrite
