"""Matplotlib figures of the report. Each function returns a Figure (or None if nothing to draw)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from genft.report import data as D  # noqa: E402

BASE_COLOR = "#7f7f7f"
STYLES = {"prompt1": "-", "prompt2": "--"}


def color(model: str, i: int = 0) -> str:
    """The base model's grey, a method's registered colour (an entry named after its method),
    else the i-th colour of tab10."""
    from genft.training.method_registry import get_method, method_names

    if model == "base":
        return BASE_COLOR
    if model in method_names() and get_method(model).color:
        return get_method(model).color
    return plt.cm.tab10(i % 10)


def heatmaps(data: D.ReportData) -> plt.Figure | None:
    """Per method: train tasks × test sets, and the difference from the base model."""
    d = data.final()
    d = d[d["model"] != "base"]
    if d.empty:
        return None
    methods = D.model_order(d["model"])
    tests = list(dict.fromkeys(data.final()["test_task"]))
    groups = data.groups
    base = data.final()[data.final()["model"] == "base"].groupby("test_task")["value"].mean()
    fig, axes = plt.subplots(2, len(methods), squeeze=False,
                             figsize=(max(4.5, 1.3 * len(tests)) * len(methods) * 0.9 + 1,
                                      2 * (0.9 + 0.5 * len(groups)) + 1.6))
    for j, method in enumerate(methods):
        m = d[d["model"] == method].pivot_table(index="group", columns="test_task", values="value",
                                                aggfunc="mean").reindex(index=groups, columns=tests)
        diff = m - base.reindex(tests).to_numpy()[None, :]
        _heat(axes[0, j], m, f"{method}: score", "viridis", 0, None)
        lim = np.nanmax(np.abs(diff.to_numpy())) if np.isfinite(diff.to_numpy()).any() else 1
        _heat(axes[1, j], diff, f"{method} − base", "RdBu", -lim or -1, lim or 1, signed=True)
    fig.tight_layout()
    return fig


def _heat(ax, m: pd.DataFrame, title: str, cmap: str, vmin, vmax, signed: bool = False) -> None:
    values = m.to_numpy(dtype=float)
    ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(m.columns)), m.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(m.index)), m.index, fontsize=8)
    ax.set_title(title, fontsize=10)
    lim = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = abs(v) > 0.6 * lim if signed else v < 0.6 * (vmax or np.nanmax(values))
            ax.text(j, i, f"{v:+.3f}" if signed else f"{v:.3f}", ha="center", va="center",
                    fontsize=8, color="white" if dark else "black")


def kshot_curves(data: D.ReportData, group: str) -> plt.Figure | None:
    k = D.kshot(data, group)
    if k.empty:
        return None
    tests = list(dict.fromkeys(k["test_task"]))
    fig, axes = plt.subplots(1, len(tests), squeeze=False, figsize=(3.6 * len(tests) + 1, 3.2))
    for ax, test in zip(axes[0], tests):
        t = k[k["test_task"] == test]
        for i, model in enumerate(D.model_order(t["model"])):
            for fmt, f in t[t["model"] == model].groupby("format"):
                f = f.sort_values("shots")
                ax.plot(f["shots"], f["value"], STYLES.get(fmt, ":"), marker="o", ms=4,
                        color=color(model, i), label=f"{model} {fmt}")
        rel = data.final(group)
        rel = rel[rel["test_task"] == test]["relation"].iloc[0]
        ax.set_title(f"{test}\n({rel}; {data.tasks.get(test, {}).get('metrics', ['?'])[0]})",
                     fontsize=9)
        ax.set_xlabel("shots")
        ax.set_xticks(sorted(t["shots"].unique()))
        ax.grid(alpha=0.3)
    return _finish_curves(fig, axes, f"k-shot curves, trained on {group} "
                                     f"(solid: prompt1, dashed: prompt2)", legend_from=0.86)


def size_curves(data: D.ReportData, group: str) -> plt.Figure | None:
    s = D.size_curves(data, group)
    if s is None:
        return None
    tests = list(dict.fromkeys(s["test_task"]))
    base = data.final(group)
    base = base[base["model"] == "base"].groupby("test_task")["value"].mean()
    fig, axes = plt.subplots(1, len(tests), squeeze=False, figsize=(3.6 * len(tests) + 1, 3.2))
    for ax, test in zip(axes[0], tests):
        t = s[s["test_task"] == test]
        for i, model in enumerate(D.model_order(t["model"])):
            f = t[t["model"] == model].sort_values("size_rank")
            ax.plot(f["size_rank"].astype(float), f["value"], "-o", ms=4, color=color(model, i),
                    label=model)
        if test in base:
            ax.axhline(base[test], color=BASE_COLOR, ls=":", label="base")
        ax.set_title(test, fontsize=9)
        ax.set_xlabel("training examples")
        ax.grid(alpha=0.3)
    return _finish_curves(fig, axes, f"training-size curves, trained on {group}", legend_from=0.88)


def _finish_curves(fig: plt.Figure, axes, title: str, legend_from: float) -> plt.Figure:
    """Shared finish of a row of curve panels: one legend at the right (taken from the first
    panel, whose lines every panel shares), a title, and the panels laid out left of the legend."""
    axes[0, 0].set_ylabel("score")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, legend_from, 1))
    return fig


def training_curves(over: pd.DataFrame) -> plt.Figure | None:
    if over.empty:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    keys = ["train tasks", "model", "size", "seed"]
    for i, ((group, model, size, seed), d) in enumerate(over.groupby(keys)):
        d = d.sort_values("step")
        label = f"{model} ({group}, size {size}, seed {seed})"
        if d["label answers"].notna().any():
            a.plot(d["step"], d["label answers"], "-o", ms=4, color=color(model, i), label=label)
        b.plot(d["step"], d["cross-task score"], "-o", ms=4, color=color(model, i), label=label)
    a.set_title("format specialization: share of label answers", fontsize=10)
    b.set_title("cross-task score (checkpoint grid)", fontsize=10)
    for ax in (a, b):
        ax.set_xlabel("training step (0 = base model)")
        ax.grid(alpha=0.3)
    a.set_ylim(-0.02, 1.02)
    b.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
