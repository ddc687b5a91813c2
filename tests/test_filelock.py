"""gpugrad._filelock.build_once: processes that miss a compile cache at the same moment
build the file once (the later ones wait and reuse it)."""

import subprocess
import sys
import textwrap


def test_concurrent_processes_build_once(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        from gpugrad._filelock import build_once

        target, log = Path(sys.argv[1]), Path(sys.argv[2])

        def build(path):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.5)  # a slow compile: the other process arrives meanwhile
            tmp = path.with_suffix(".tmp")
            tmp.write_text("done")
            os.replace(tmp, path)

        build_once(target, build)
        print(target.read_text())
        """
    )
    target, log = tmp_path / "out.bin", tmp_path / "builds.txt"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(target), str(log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == ["done"] * 3  # every process saw the finished file
    assert len(log.read_text().split()) == 1  # and only one built it
