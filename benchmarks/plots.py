"""PNG plots of a serving benchmark result (matplotlib, `bench` extra): throughput bars, TTFT and E2E latency
CDFs, and throughput against batch size when several batch sizes ran."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def throughput_bars(run: dict, title: str, path: Path) -> Path:
    """Output tokens/s and requests/s per system for one batch size."""
    plt = _pyplot()
    names = list(run["systems"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "output_throughput", "output tokens/s"),
                           (axes[1], "request_throughput", "requests/s")):
        values = [run["systems"][n][key] for n in names]
        bars = ax.bar(names, values, color=["tab:red" if n == "baton" else "tab:gray" for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{title}, batch size {run['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdfs(run: dict, title: str, path: Path) -> Path:
    """Empirical CDFs of per-request TTFT and E2E latency for every system."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "e2e_ms", "E2E latency (ms)")):
        for name, summary in run["systems"].items():
            xs = sorted(r[key] for r in summary["requests"] if r[key] is not None)
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=name,
                        linewidth=2.0 if name == "baton" else 1.2)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}, batch size {run['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def throughput_vs_batch_size(runs: list[dict], title: str, path: Path) -> Path:
    """Output tokens/s against batch size, one line per system."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = {n for run in runs for n in run["systems"]}
    for name in sorted(names):
        pts = [(run["batch_size"], run["systems"][name]["output_throughput"]) for run in runs if name in run["systems"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                linewidth=2.0 if name == "baton" else 1.2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("output tokens/s")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(result: dict, stem: Path) -> list[Path]:
    """Every plot for `result`; files are `<stem>-throughput.png`, `-latency-cdf.png`, `-batch-sizes.png`."""
    title = f"{result['model']} on {result['device']}"
    main = result["runs"][-1]
    paths = [throughput_bars(main, title, stem.with_name(stem.name + "-throughput.png")),
             latency_cdfs(main, title, stem.with_name(stem.name + "-latency-cdf.png"))]
    if len(result["runs"]) > 1:
        paths.append(throughput_vs_batch_size(result["runs"], title, stem.with_name(stem.name + "-batch-sizes.png")))
    return paths
