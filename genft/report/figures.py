"""Matplotlib figures of the report. Each function returns a Figure (or None if nothing to draw)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
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


def heatmaps(data: D.ReportData) -> list[tuple[str, plt.Figure]]:
    """Two figures: each method's score, and its difference from the base model. Panels
    are split by metric; every metric has one colour scale shared by all methods (and a
    colour bar), differences a diverging scale centred on 0."""
    d = data.final()
    if d[d["model"] != "base"].empty:
        return []
    tests = list(dict.fromkeys(d["test_task"]))
    metrics = {t: d[d["test_task"] == t]["metric"].iloc[0] for t in tests}
    by_metric = {m: [t for t in tests if metrics[t] == m] for m in dict.fromkeys(metrics.values())}
    methods = [m for m in D.model_order(d["model"]) if m != "base"]
    base = d[d["model"] == "base"].groupby("test_task")["value"].mean()
    scores = {m: d[d["model"] == m].pivot_table(index="group", columns="test_task", values="value",
                                                aggfunc="mean").reindex(data.groups) for m in methods}
    diffs = {m: s - base.reindex(s.columns).to_numpy()[None, :] for m, s in scores.items()}
    scores = {"base": pd.DataFrame([base.to_numpy()], index=["in context"], columns=base.index),
              **scores}
    return [("score per method (colour scale shared per metric)",
             _heat_grid(scores, by_metric, "viridis", signed=False)),
            ("difference from the base model (red: worse, blue: better)",
             _heat_grid(diffs, by_metric, "RdBu", signed=True))]


def _heat_grid(frames: dict[str, pd.DataFrame], by_metric: dict[str, list[str]], cmap: str,
               signed: bool) -> plt.Figure:
    rows = max(len(f.index) for f in frames.values())
    widths = [max(1.2, 0.9 * len(t)) for t in by_metric.values()]
    fig, axes = plt.subplots(len(frames), len(by_metric), squeeze=False,
                             figsize=(sum(widths) * 1.5 + 3, len(frames) * (0.5 * rows + 0.9) + 0.8),
                             gridspec_kw={"width_ratios": widths})
    for j, (metric, tests) in enumerate(by_metric.items()):
        values = np.concatenate([f.reindex(columns=tests).to_numpy(float).ravel() for f in frames.values()])
        top = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
        norm = (TwoSlopeNorm(0, -(top or 1), top or 1) if signed
                else Normalize(0, max(top, 1e-9)))
        for i, (name, f) in enumerate(frames.items()):
            im = _heat(axes[i, j], f.reindex(columns=tests), cmap, norm, signed)
            axes[i, j].set_title(f"{name}: {metric}" + (" − base" if signed else ""), fontsize=9)
            if i < len(frames) - 1:
                axes[i, j].set_xticklabels([])
            if j > 0:  # the rows (training tasks) are the same in every panel of a row
                axes[i, j].set_yticklabels([])
        fig.colorbar(im, ax=list(axes[:, j]), shrink=0.8, aspect=30, pad=0.02,
                     label=f"{metric}" + (" − base" if signed else ""))
    return fig


def _heat(ax, m: pd.DataFrame, cmap: str, norm, signed: bool):
    values = m.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(m.columns)), m.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(m.index)), m.index, fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            shade = norm(v)
            dark = abs(shade - 0.5) > 0.3 if signed else shade < 0.55
            ax.text(j, i, f"{v:+.3f}" if signed else f"{v:.3f}", ha="center", va="center",
                    fontsize=8, color="white" if dark else "black")
    return im


def kshot_curves(data: D.ReportData, group: str) -> plt.Figure | None:
    k = D.kshot(data, group)
    if k.empty:
        return None
    seeds = D.kshot_seeds(data, group)
    several = seeds.groupby("model")["train_seed"].nunique()
    seeds = seeds[seeds["model"].isin(several[several > 1].index)]  # one seed: the line is it
    tests = list(dict.fromkeys(k["test_task"]))
    fig, axes = plt.subplots(1, len(tests), squeeze=False, figsize=(3.6 * len(tests) + 1, 3.2))
    for ax, test in zip(axes[0], tests):
        t = k[k["test_task"] == test]
        for i, model in enumerate(D.model_order(t["model"])):
            for fmt, f in t[t["model"] == model].groupby("format"):
                f = f.sort_values("shots")
                bars = f["se"].to_numpy(float) * 1.96 if f["se"].notna().all() else None
                ax.errorbar(f["shots"], f["value"], yerr=bars, fmt=STYLES.get(fmt, ":"),
                            marker="o", ms=4, capsize=3, color=color(model, i),
                            label=f"{model} {fmt}")
                p = seeds[(seeds["test_task"] == test) & (seeds["model"] == model)
                          & (seeds["format"] == fmt)]
                if len(p):  # each training seed's own value, nudged sideways per model
                    ax.plot(p["shots"] + 0.08 * (i - 1), p["value"], ls="none", marker="x",
                            ms=4, alpha=0.6, color=color(model, i))
        rel = data.final(group)
        rel = rel[rel["test_task"] == test]["relation"].iloc[0]
        ax.set_title(f"{test}\n({rel}; {data.tasks.get(test, {}).get('metrics', ['?'])[0]})",
                     fontsize=9)
        ax.set_xlabel("shots")
        ks = sorted(t["shots"].unique())
        ax.set_xticks(ks)
        if len(ks) == 1:  # one k: a point with its interval, centred in a readable range
            ax.set_xlim(ks[0] - 1, ks[0] + 1)
        ax.grid(alpha=0.3)
    marks = "; x: each training seed" if len(seeds) else ""
    return _finish_curves(fig, axes, f"k-shot curves, trained on {group} (solid: prompt1, "
                                     f"dashed: prompt2; bars: 95% interval where stored{marks})",
                          legend_from=0.86)


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


def loss_curves(logs: dict[str, pd.DataFrame]) -> plt.Figure | None:
    """Training loss per step of every job (one line per stage), ProMoT's stage-1 dev loss
    as points on the same axes."""
    if not logs:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    seen: dict[str, int] = {}  # jobs of one method share its colour, told apart by line style
    for i, (job, log) in enumerate(logs.items()):
        method = job.split(" ")[0]
        c, style = color(method, i), ["-", "--", ":", "-."][seen.get(method, 0) % 4]
        seen[method] = seen.get(method, 0) + 1
        train = log[log["loss"].notna()] if "loss" in log else log.iloc[0:0]
        for j, (stage, st) in enumerate(train.groupby("stage", sort=False)):
            ax.plot(st["step"], st["loss"], style, color=c, lw=1.2 + 0.6 * (j > 0),
                    label=f"{job} {stage}" if train["stage"].nunique() > 1 else job)
        if "dev_loss" in log and log["dev_loss"].notna().any():
            dev = log[log["dev_loss"].notna()]
            ax.plot(dev["step"], dev["dev_loss"], "D", ms=5, color=c, mfc="white",
                    label=f"{job} dev loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def per_layer(change: pd.DataFrame) -> plt.Figure | None:
    """Relative parameter change per transformer layer, one line per trained model."""
    if change.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    keys = ["model", "train tasks", "size", "seed"]
    for i, ((model, group, size, seed), d) in enumerate(change.groupby(keys, sort=False)):
        d = d.sort_values("layer")
        ax.plot(d["layer"], d["relative change"], ["-", "--", ":", "-."][i % 4], marker="o", ms=3,
                color=color(model, i), label=f"{model} ({group}, size {size}, seed {seed})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("relative change")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
