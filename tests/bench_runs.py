"""The benchmark smoke runs (`--quick` subprocesses), started together and shared by their tests.

Each run is one or two processes at one thread; run one after another they were a fifth of the suite's wall
time on 2 cores. Started at once, each test waits only for its own run, and the others go on beside it."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # all of them at once on 2 cores; each alone takes 20-80 s


def commands(out: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "bench": [py, str(REPO / "bench" / "run.py"), "--quick", "--device", "cpu", "--out", str(out / "bench.json")],
        "lora": [py, "-m", "bench.lora", "--quick", "--threads", "1", "--out", str(out / "lora.json")],
        "heap": [py, "-m", "bench.heap", "--quick", "--threads", "1", "--variants", "trim", "trim_ab",
                 "--out", str(out / "heap.json")],
        "scale": [py, "-m", "bench.scale", "--quick", "--out", str(out / "scale.json")],
    }


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    out: Path  # the JSON the run wrote


class BenchRuns:
    def __init__(self, folder: Path):
        self.folder = folder
        self.procs = {}
        for name, cmd in commands(folder).items():
            log = (open(folder / f"{name}.stdout", "w"), open(folder / f"{name}.stderr", "w"))
            self.procs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=log[0], stderr=log[1], text=True), log)

    def result(self, name: str) -> Finished:
        proc, logs = self.procs[name]
        try:
            proc.wait(timeout=TIMEOUT_S)
        finally:
            for f in logs:
                f.close()
        read = lambda suffix: (self.folder / f"{name}.{suffix}").read_text()  # noqa: E731
        return Finished(proc.returncode, read("stdout"), read("stderr"), self.folder / f"{name}.json")

    def stop(self) -> None:
        for proc, logs in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in logs:
                f.close()
