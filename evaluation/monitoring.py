"""Memory probes for the resource harness: whole-device GPU memory (NVML) and process-tree RSS.

GPU memory is measured the way FLARE scores it: device total minus free, so the CUDA context,
every caching allocator and any other process on the device count. Without NVML or without the
device the probe is simply absent and the harness records no GPU numbers.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)

MIB = float(2 ** 20)  # "MB" in every report of this package means MiB, as nvidia-smi shows


class GpuMemoryProbe:
    """Used memory (total - free, MiB) of one GPU via NVML; `open` returns None when unavailable."""

    def __init__(self, nvml, handle, index: int, name: str):
        self._nvml, self._handle = nvml, handle
        self.index, self.name = index, name

    @classmethod
    def open(cls, index: int) -> "GpuMemoryProbe | None":
        try:
            import pynvml  # nvidia-ml-py; a missing package means no GPU numbers, not a failure
        except ImportError:
            log.info("pynvml not installed: no GPU memory sampling")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            log.info("NVML unavailable (%s): no GPU memory sampling", error)
            return None
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
        except pynvml.NVMLError as error:
            log.warning("GPU %d not available through NVML (%s): no GPU memory sampling", index, error)
            pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handle, index, name.decode() if isinstance(name, bytes) else str(name))

    def used_mb(self) -> float | None:
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError as error:
            log.warning("NVML read failed: %s", error)
            return None
        return (info.total - info.free) / MIB

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MiB); 0 once it has gone.

    Shared pages count once per process, as in FLARE-style RAM accounting by process; a `docker
    run` client's tree does not include the container's processes (they belong to the daemon).
    """
    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # a child that exited between listing and reading
    return total / MIB


@dataclass
class MemoryTrace:
    """Samples over time; gpu_mb is empty when there is no GPU probe."""
    times_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    gpu_mb: list[float] = field(default_factory=list)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_mb)


def area_under_curve(times_s: list[float], values: list[float]) -> float:
    """Trapezoidal integral (value x seconds); a single sample has no duration and gives 0."""
    return float(sum((t1 - t0) * (v0 + v1) / 2.0
                     for t0, t1, v0, v1 in zip(times_s, times_s[1:], values, values[1:])))


def sample_until_exit(process: subprocess.Popen, gpu: GpuMemoryProbe | None, interval_s: float,
                      timeout_s: float | None = None) -> tuple[MemoryTrace, float, bool]:
    """Sample memory every `interval_s` until `process` exits (or the timeout passes).

    Returns the trace, the wall time from the call to the exit and whether the timeout hit (the
    caller kills the process then). Waiting on the process between samples, instead of sleeping,
    makes the wall time exact rather than rounded up to the next sample.
    """
    trace = MemoryTrace()
    started = time.perf_counter()
    while True:
        now = time.perf_counter() - started
        trace.times_s.append(now)
        trace.rss_mb.append(process_tree_rss_mb(process.pid))
        if gpu is not None:
            used = gpu.used_mb()
            trace.gpu_mb.append(used if used is not None else (trace.gpu_mb[-1] if trace.gpu_mb else 0.0))
        if timeout_s is not None and now >= timeout_s:
            return trace, now, True
        next_tick = started + len(trace.times_s) * interval_s
        try:
            process.wait(timeout=max(next_tick - time.perf_counter(), 0.0))
        except subprocess.TimeoutExpired:
            continue
        wall_s = time.perf_counter() - started
        # Hold the last sample up to the exit, so the area covers the whole run.
        trace.times_s.append(wall_s)
        trace.rss_mb.append(trace.rss_mb[-1])
        if trace.gpu_mb:
            trace.gpu_mb.append(trace.gpu_mb[-1])
        return trace, wall_s, False
