"""What every benchmark script shares: the clock, interleaved timing, paired ratios, peak memory (in a fresh
process), the machine's name, the load average, and replacing one section of RESULTS.md.

The scripts run as files (``python benchmarks/decoder.py``), so they import this module as ``common``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")

# With one torch thread on a shared CPU, wall time also counts the slices the scheduler gave other processes; the
# process's CPU time counts only the work it did, which is what a model's speed is.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK_HELP = ("what times a call: wall time, or the process's CPU time (default: cpu on a CPU with one torch "
              "thread, where other processes' slices would otherwise count; wall otherwise)")
_clock = CLOCKS["wall"]


def use_clock(requested: str | None, device: str) -> str:
    """Select the clock for ``timed`` (see ``CLOCKS``) and return its name; call after setting torch's threads."""
    global _clock
    one_thread = device == "cpu" and torch.get_num_threads() == 1
    name = requested or ("cpu" if one_thread else "wall")
    if name == "cpu" and not one_thread:
        raise SystemExit("--clock cpu measures one CPU thread's work: use it with --device cpu --threads 1")
    _clock = CLOCKS[name]
    return name


def clock_description(name: str) -> str:
    return "CPU time of the process (one torch thread)" if name == "cpu" else "wall-clock time"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class OwnTime:
    """What a function returns when it ran its work in another process and timed it there with the same clock
    (``seconds``): ``timed`` takes that time instead of its own process's."""

    def __init__(self, seconds: float, result: object = None):
        self.seconds, self.result = seconds, result


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = _clock()
    result = fn()
    sync(device)
    return result.seconds if isinstance(result, OwnTime) else _clock() - start


def interleaved(fns: dict[str, Callable], device: str, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, every repetition running each once, in an order that rotates, so that
    drift in the machine's speed hits every side alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, times = list(fns), {name: [] for name in fns}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(fns[name], device))
    return times


GENERATION_REPEATS_HELP = ("interleaved repetitions of the generation rows (default: 3x --repeats): a generation "
                           "call is short, and on a shared machine single calls vary by +-15 percent, so its median "
                           "needs more of them than a training step's")


def generation_repeats(given: int | None, repeats: int) -> int:
    """Repetitions of the generation rows: ``given``, or three times the other rows' ``repeats``."""
    return given or 3 * repeats


def ratios(times: dict[str, list[float]], reference: str, name: str) -> list[float]:
    """Speed of ``name`` over ``reference`` in each repetition: reference's time over name's."""
    return [r / v for r, v in zip(times[reference], times[name])]


def paired_ratio(times: dict[str, list[float]], reference: str, name: str) -> float:
    """Speed of ``name`` over ``reference``: the median of per-repetition ratios (robust to drift)."""
    return statistics.median(ratios(times, reference, name))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# glibc: a fixed mmap threshold (no dynamic raise) returns every freed block of 64 KiB or more to the system at once,
# so the resident set follows the live tensors instead of what the allocator keeps cached. Memory probes run in a
# fresh process with this environment.
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
CPU_MEMORY_METHOD = ("RSS high-water mark (VmHWM, reset through /proc/self/clear_refs) above the RSS just before "
                     "the step, in a fresh process per measurement, glibc returning freed blocks of 64 KiB or more "
                     "at once")


def measure_peak(fn: Callable[[], object], device: str) -> tuple[int, str]:
    """Bytes of peak memory above what was held just before ``fn`` ran, and how they were measured."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    try:  # Linux: writing 5 to clear_refs resets the high-water mark, so VmHWM is this step's peak.
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024, "VmHWM"
    except OSError:  # elsewhere: growth of the lifetime maximum, a lower bound when the step is not a new peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        scale = 1 if sys.platform == "darwin" else 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale, "ru_maxrss growth"


def run_probe(script: str, spec: dict) -> dict:
    """Run ``script --memory-probe SPEC`` in a fresh process with ``PROBE_ENV``; the JSON of its last line."""
    out = subprocess.run([sys.executable, script, "--memory-probe", json.dumps(spec)], capture_output=True,
                         text=True, env={**os.environ, **PROBE_ENV})
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(device: str, threads: bool = True) -> str:
    """The GPU's name, or the CPU model, its core count and (``threads``) the number of torch threads."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({os.cpu_count()} cores" + (f", {torch.get_num_threads()} threads)" if threads else ")")


def load_average() -> float:
    """One-minute load average: how busy the machine was (timings on a shared machine are noisy); NaN where the
    system keeps none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def add_run_arguments(parser) -> None:
    """``--repeats`` (interleaved timed repetitions), ``--threads`` (torch threads, default one: CPU time of one
    thread is the fair clock on a shared machine) and ``--write`` (replace the script's RESULTS.md section)."""
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` headed by ``section``'s first line (a ``## `` heading, matched as a whole
    line) up to the next ``## `` heading, or append ``section``; every other section stays as it is."""
    section = section.strip("\n")
    heading = section.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, not {heading!r}")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    text = "\n" + text.rstrip("\n") + "\n"  # every line, the first too, follows a newline
    start = text.find(f"\n{heading}\n")
    after = ""
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text, after = text[:start], (text[end:].lstrip("\n") if end >= 0 else "")
    text = text.rstrip("\n") + "\n\n" + section + "\n" + ("\n" + after if after else "")
    path.write_text(text.lstrip("\n"))
