"""Memory-over-time PNG of one harness case (matplotlib, Agg canvas, no pyplot global state)."""
from __future__ import annotations

from pathlib import Path

from evaluation.monitoring import MemoryTrace


def plot_memory_trace(path, trace: MemoryTrace, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(trace.times_s, trace.rss_mb, color="tab:blue",
              label=f"RAM, process tree RSS (max {max(trace.rss_mb, default=0):.0f} MB)")
    if trace.has_gpu:
        axes.plot(trace.times_s, trace.gpu_mb, color="tab:red",
                  label=f"GPU, device total - free (max {max(trace.gpu_mb):.0f} MB)")
    else:
        axes.text(0.99, 0.02, "no GPU (NVML unavailable)", transform=axes.transAxes, ha="right",
                  va="bottom", color="grey")
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("memory (MB = MiB)")
    axes.set_ylim(bottom=0)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
