"""`python -m gpugrad info` reports the setup, and `import gpugrad` is quiet: the
device choice is logged at INFO (gg.device_reason() says why), never printed."""

import os
import subprocess
import sys
from pathlib import Path

import gpugrad as gg

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "GPUGRAD_DEVICE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_import_is_quiet_whatever_the_device():
    # the default choice (here: CuPy without a usable GPU, or no CuPy) prints nothing
    proc = _run("-c", "import gpugrad")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_the_reason_is_logged_at_info_level():
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "import gpugrad as gg; print('reason:', gg.device_reason())"
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "INFO gpugrad: using device" in proc.stderr or "GPUGRAD_DEVICE" in proc.stdout
    assert "WARNING" not in proc.stderr
    reason = proc.stdout.split("reason: ", 1)[1].strip()
    assert reason and reason in proc.stderr


def test_device_reason():
    assert isinstance(gg.device_reason(), str) and gg.device_reason()


def test_info_reports_the_setup():
    proc = _run("-m", "gpugrad", "info", env_extra={"GPUGRAD_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert rows["gpugrad"].startswith(gg.__version__)
    assert rows["device"].startswith("cpu: GPUGRAD_DEVICE=cpu")
    for key in ("CuPy", "emulator", "kernel", "NumPy", "Python"):
        assert any(k.startswith(key) for k in rows), key
    assert "emulator cache" in out and "kernel sources" in out


def test_help_and_unknown_commands():
    proc = _run("-m", "gpugrad", "--help")
    assert proc.returncode == 0 and "info" in proc.stdout
    assert _run("-m", "gpugrad").returncode == 0
    bad = _run("-m", "gpugrad", "nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
