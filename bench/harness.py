"""What every benchmark shares: the machine it ran on, the load of other processes, timing, fp32-only
CUDA, and worker processes that print one JSON result line."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_RESULT "  # the line a worker process prints its JSON result on


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import transformers

    info = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device), "loadavg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class LoadMeter:
    """Share of the machine's CPU time used by *other* processes while a section ran (Linux /proc/stat).

    busy = all non-idle jiffies; ours = this process and its finished children (rusage). 0 = quiet machine,
    1 = every core busy with someone else's work."""

    def __init__(self):
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()

    @staticmethod
    def _busy() -> Optional[float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def other_share(self) -> Optional[float]:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        other = (busy - self.busy0) - (self._ours() - self.ours0)
        return round(min(max(other / (wall * (os.cpu_count() or 1)), 0.0), 1.0), 3)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[int], object], warmup: int, iters: int, device: torch.device) -> list[float]:
    """fn(i) for i in range(warmup) untimed, then `iters` timed calls (seconds each)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(warmup, warmup + iters):
        t = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


@contextlib.contextmanager
def fp32_only(device: torch.device):
    """On CUDA, compare fp32 with fp32: no TF32 in matmuls or cuDNN convolutions while measuring."""
    if device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def write_results(path: Path, doc: dict) -> None:
    """A benchmark's results as indented JSON, and the line saying where they went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def progress(message: str) -> None:
    """Worker progress on stderr: shown by the parent when a worker fails or hangs."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process, MiB.

    Not ru_maxrss: on Linux a child starts with its parent's RSS at fork as its ru_maxrss, so a worker
    started by a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kib / 1024 / (1024 if sys.platform == "darwin" else 1)


def start_workers(specs: list[dict], threads: int, module: str) -> list[tuple[dict, subprocess.Popen]]:
    """One fresh `python -m <module> SPEC_JSON` process per spec, all started at once; a spec's "env" (a dict)
    is added to that process's environment (e.g. LD_PRELOAD of another allocator)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return [(spec, subprocess.Popen([sys.executable, "-m", module, json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**env, **spec.get("env", {})}, cwd=str(REPO)))
            for spec in specs]


def collect_workers(procs: list[tuple[dict, subprocess.Popen]], timeout: float = 600) -> list[dict]:
    """The workers' JSON results, in order. A worker still running at the deadline has its Python stacks
    dumped to its stderr (faulthandler, SIGUSR1) and is killed; a result it printed before is still used."""
    deadline = time.monotonic() + timeout
    finished = []
    for spec, p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, AttributeError):
                p.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            p.kill()  # only the processes started here
            stdout, stderr = p.communicate()
            stderr += f"\n[bench] worker still running after {timeout:.0f}s: killed"
        finished.append((spec, p.returncode, stdout, stderr))
    results, errors = [], []
    for spec, rc, stdout, stderr in finished:
        lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
        if lines:
            results.append(json.loads(lines[-1][len(RESULT_TAG):]))
            if rc != 0:
                print(f"[bench] worker {spec['kind']} {spec.get('rank', spec.get('batch'))} exited {rc} after "
                      f"its result:\n{stderr[-2000:]}", file=sys.stderr, flush=True)
        else:
            errors.append(f"worker {spec['kind']} {spec.get('rank', spec.get('batch'))} exited {rc} "
                          f"without a result:\n{stderr[-4000:]}")
    if errors:
        raise RuntimeError("\n".join(errors))
    return results


def run_workers(specs: list[dict], threads: int, module: str, timeout: float = 600) -> list[dict]:
    return collect_workers(start_workers(specs, threads, module), timeout)
