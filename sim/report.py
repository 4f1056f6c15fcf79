"""Experiment outputs: CSV tables, PNG plots and a markdown summary per experiment."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sim.engine import SERVED, SimResult


def violation_series(res: SimResult, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """SLO violation ratio of the arrivals in each time bin."""
    if res.n == 0:
        return np.zeros(0), np.zeros(0)
    bins = np.floor(res.arrival_s / bin_s).astype(int)
    nb = int(bins.max()) + 1
    total = np.bincount(bins, minlength=nb)
    bad = np.bincount(bins, weights=(res.status != SERVED).astype(float), minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(total > 0, bad / np.maximum(total, 1), np.nan)
    return np.arange(nb) * bin_s, ratio


def demand_series(arrival_s: np.ndarray, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    if len(arrival_s) == 0:
        return np.zeros(0), np.zeros(0)
    bins = np.floor(np.asarray(arrival_s) / bin_s).astype(int)
    counts = np.bincount(bins)
    return np.arange(len(counts)) * bin_s, counts / bin_s


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |\n"
                          for r in rows)


def write_csv(path: Path, rows: Sequence[Mapping]) -> None:
    if not rows:
        path.write_text("")
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def timeseries_rows(runs: Mapping[str, SimResult], bin_s: float) -> list[dict]:
    rows = []
    for name, res in runs.items():
        t, v = violation_series(res, bin_s)
        _, d = demand_series(res.arrival_s, bin_s)
        fid = {w["t"]: w["fid"] for w in res.fid_windows}
        for k in range(len(t)):
            rows.append({"policy": name, "t": t[k], "demand_qps": d[k] if k < len(d) else 0.0,
                         "slo_violation_ratio": v[k],
                         "fid": fid.get(t[k], float("nan"))})
    return rows


def plot_timeseries(path: Path, runs: Mapping[str, SimResult], bin_s: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    first = next(iter(runs.values()))
    t, d = demand_series(first.arrival_s, bin_s)
    axes[0].plot(t, d, color="black")
    axes[0].set_ylabel("demand (queries/s)")
    for name, res in runs.items():
        ws = [w for w in res.fid_windows if w["images"] > 0]
        axes[1].plot([w["t"] for w in ws], [w["fid"] for w in ws], label=name)
        tv, v = violation_series(res, bin_s)
        axes[2].plot(tv, v, label=name)
    axes[1].set_ylabel("FID (window)")
    axes[2].set_ylabel("SLO violation ratio")
    axes[2].set_xlabel("time (s)")
    axes[1].legend(fontsize=8, ncol=3)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(path: Path, rows: Sequence[Mapping], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["policy"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [r["fid"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("FID (lower is better)")
    lo = min(r["fid"] for r in rows if math.isfinite(r["fid"])) if rows else 0
    axes[0].set_ylim(max(0.0, lo - 3), None)
    axes[1].bar(names, [r["slo_violation_ratio"] for r in rows], color="tab:red")
    axes[1].set_ylabel("SLO violation ratio")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(path: Path, rows: Sequence[Mapping], x: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == name]
        axes[0].plot([r[x] for r in rs], [r["fid"] for r in rs], marker="o", label=name)
        axes[1].plot([r[x] for r in rs], [r["slo_violation_ratio"] for r in rs], marker="o",
                     label=name)
    axes[0].set_ylabel("FID")
    axes[1].set_ylabel("SLO violation ratio")
    for ax in axes:
        ax.set_xlabel(x)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
