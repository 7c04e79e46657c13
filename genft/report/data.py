"""The numbers behind the report, as small DataFrames (figures and tables only draw them).

Conventions, stated in the report too:
* a *group* is a set of training tasks ("tweet_sentiment", or "a+b" for multi-task);
  the base model is the reference row of every group, and a test set's relation
  (in-domain, out-of-domain, cross-task) is relative to the group's families;
* unless a section says otherwise, a score is the test set's primary metric (its
  first metric), averaged over training seeds, the evaluated shots and formats;
  final models of the largest training size only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from genft.experiments.results import label_answer_rate, empty_answer_rate, load_results, relation
from genft.experiments.store import Store


@dataclass
class ReportData:
    table: pd.DataFrame  # tidy results
    prim: pd.DataFrame  # primary-metric rows, expanded per group (base repeated per group)
    tasks: dict[str, dict]
    runs: list[dict]
    checkpoints: list[dict]
    predictions: dict[str, list[str]]
    normalize: str

    @property
    def groups(self) -> list[str]:
        return sorted(self.prim["group"].dropna().unique())

    def group_words(self, group: str) -> list[str]:
        words = []
        for name in group.split("+"):
            words += [w for w in self.tasks.get(name, {}).get("labels", []) if w not in words]
        return words

    def final(self, group: str | None = None) -> pd.DataFrame:
        """Final models at the largest training size (base included)."""
        d = self.prim[self.prim["step"].isna()]
        if group is not None:
            d = d[d["group"] == group]
        sizes = d[d["model"] != "base"]["size_rank"]
        if len(sizes):
            d = d[(d["model"] == "base") | (d["size_rank"] == sizes.max())]
        return d


def collect(out) -> ReportData:
    table = load_results(out)
    store = Store.open_existing(out)
    try:
        runs, checkpoints, predictions = store.runs(), store.checkpoints(), store.predictions()
    finally:
        store.close()
    tasks: dict[str, dict] = {}
    for r in runs:
        tasks.update(r["meta"].get("tasks", {}))
    normalize = runs[-1]["config"].get("normalize", "chance") if runs else "chance"
    prim = table[table["primary"]].copy()
    # rank sizes so that "all" (None) counts as the largest
    prim["size_rank"] = prim["train_size"].astype("Float64").fillna(float("inf"))
    trained = prim[prim["model"] != "base"].assign(group=lambda d: d["train_tasks"])
    base = prim[prim["model"] == "base"]
    parts = [trained]
    for group in sorted(trained["group"].unique()):
        families = {tasks.get(t, {}).get("family") for t in group.split("+")}
        b = base.assign(group=group)
        b["relation"] = [relation(f, tasks.get(t, {}).get("domain"), families)
                         for f, t in zip(b["test_family"], b["test_task"])]
        parts.append(b)
    if trained.empty:
        parts.append(base.assign(group="(none)", relation="reference"))
    prim = pd.concat(parts, ignore_index=True)
    return ReportData(table, prim, tasks, runs, checkpoints, predictions, normalize)


def model_order(labels) -> list[str]:
    labels = list(dict.fromkeys(labels))
    return (["base"] if "base" in labels else []) + [m for m in labels if m != "base"]


def heat(data: ReportData, group: str) -> pd.DataFrame:
    """model × test set: mean primary score."""
    d = data.final(group)
    return d.pivot_table(index="model", columns="test_task", values="value", aggfunc="mean")


def relation_summary(data: ReportData) -> pd.DataFrame:
    """group × model: mean normalized score per relation (in-domain, out-of-domain, cross-task)."""
    rows = []
    for group in data.groups:
        d = data.final(group)
        for model in model_order(d["model"]):
            m = d[d["model"] == model]
            row = {"train tasks": group, "model": model}
            for rel in ("in-domain", "out-of-domain", "cross-task"):
                r = m[m["relation"] == rel]
                row[f"{rel} (raw)"] = r.groupby("test_task")["value"].mean().mean() if len(r) else None
                row[rel] = r.groupby("test_task")["normalized"].mean().mean() if len(r) else None
            rows.append(row)
    return pd.DataFrame(rows)


def kshot(data: ReportData, group: str) -> pd.DataFrame:
    d = data.final(group)
    return d.groupby(["test_task", "model", "format", "shots"], as_index=False)["value"].mean()


def size_curves(data: ReportData, group: str) -> pd.DataFrame | None:
    d = data.prim[(data.prim["group"] == group) & data.prim["step"].isna()]
    trained = d[d["model"] != "base"]
    if trained["size_rank"].nunique() < 2:
        return None
    return trained.groupby(["test_task", "model", "size_rank"], as_index=False)["value"].mean()


def specialization(data: ReportData) -> pd.DataFrame:
    """For groups trained on classification: label-answer and empty-answer rates on the
    generation test sets, per model (base = reference), with the primary score."""
    rows = []
    for group in data.groups:
        words = data.group_words(group)
        if not words:
            continue
        d = data.final(group).drop_duplicates("cell_key")
        d = d[d["test_type"] == "generation"]
        for model in model_order(d["model"]):
            for task, t in d[d["model"] == model].groupby("test_task"):
                preds = [p for key in t["cell_key"] for p in data.predictions.get(key, [])]
                rows.append({"train tasks": group, "model": model, "test set": task,
                             "relation": t["relation"].iloc[0],
                             "label answers": label_answer_rate(preds, words),
                             "empty answers": empty_answer_rate(preds),
                             "score": t["value"].mean(), "items": len(preds)})
    return pd.DataFrame(rows)


def over_training(data: ReportData) -> pd.DataFrame:
    """Per job with intermediate checkpoints: step → label-answer rate and cross-task score
    on the checkpoint grid (step 0 is the base model)."""
    inter = data.prim[data.prim["step"].notna()]
    if inter.empty:
        return pd.DataFrame()
    rows = []
    ck_by_key = {c["key"]: c for c in data.checkpoints}
    for (group, model, size, seed), d in inter.groupby(["group", "model", "size_rank", "train_seed"]):
        grid = set(zip(d["test_task"], d["shots"], d["format"]))
        words = data.group_words(group)
        final = data.prim[(data.prim["group"] == group) & (data.prim["model"] == model)
                          & data.prim["step"].isna() & (data.prim["size_rank"] == size)
                          & (data.prim["train_seed"] == seed)]
        base = data.prim[(data.prim["group"] == group) & (data.prim["model"] == "base")]
        final_step = _final_step(ck_by_key, final, d)
        points = [(0, base), *((int(s), x) for s, x in d.groupby("step")), (final_step, final)]
        for step, x in points:
            x = x[[k in grid for k in zip(x["test_task"], x["shots"], x["format"])]]
            gen = x[x["test_type"] == "generation"]
            preds = [p for key in gen["cell_key"] for p in data.predictions.get(key, [])]
            cross = x[x["relation"] == "cross-task"]
            rows.append({"train tasks": group, "model": model,
                         "size": "all" if size == float("inf") else int(size), "seed": seed,
                         "step": step,
                         "label answers": label_answer_rate(preds, words) if words else None,
                         "cross-task score": cross.groupby("test_task")["value"].mean().mean()
                         if len(cross) else None})
    return pd.DataFrame(rows)


def _final_step(ck_by_key, final: pd.DataFrame, inter: pd.DataFrame) -> int:
    if len(final):
        settings = ck_by_key.get(final["model_key"].iloc[0], {}).get("settings") or {}
        if settings.get("steps"):
            return int(settings["steps"])
    steps = sorted(inter["step"].unique())
    return int(steps[-1] + (steps[-1] - (steps[-2] if len(steps) > 1 else 0)))


def normalized_average(data: ReportData) -> pd.DataFrame:
    """group × model: mean over held-out test sets (config `held_out`, minus the group's own
    tasks; default: the cross-task sets) of the normalized score,
    per k shared by every held-out set, and over all evaluated k."""
    rows = []
    chosen = data.runs[-1]["config"].get("held_out") if data.runs else None
    for group in data.groups:
        d = data.final(group)
        if chosen:
            held = d[d["test_task"].isin(chosen) & ~d["test_task"].isin(group.split("+"))]
        else:
            held = d[d["relation"] == "cross-task"]
        if held.empty:
            continue
        tasks = held["test_task"].unique()
        common = sorted(set.intersection(*(set(held[held["test_task"] == t]["shots"]) for t in tasks)))
        for model in model_order(held["model"]):
            m = held[held["model"] == model]
            row = {"train tasks": group, "model": model, "held-out sets": len(tasks)}
            for k in common:
                row[f"{k}-shot"] = m[m["shots"] == k].groupby("test_task")["normalized"].mean().mean()
            row["all k"] = m.groupby("test_task")["normalized"].mean().mean()
            rows.append(row)
    return pd.DataFrame(rows)


def param_changes(data: ReportData) -> pd.DataFrame:
    """One row per (model, module type): mean |Δ|, relative change, max |Δ| (overall first)."""
    rows = []
    for c in sorted(data.checkpoints, key=lambda c: (c["label"], c["step"] or 1 << 30)):
        change = c.get("param_change")
        if not change:
            continue
        modules = {"overall": change.get("overall", {}), **change.get("by_module", {})}
        for module, stats in modules.items():
            if not isinstance(stats, dict):
                continue
            rows.append({"model": c["label"], "train tasks": "+".join(c["tasks"]),
                         "size": c["train_size"] if c["train_size"] is not None else "all",
                         "seed": c["seed"], "step": c["step"] if c["step"] is not None else "final",
                         "module": module, "mean |Δ|": stats.get("mean_abs_change"),
                         "relative change": stats.get("relative_change"),
                         "max |Δ|": stats.get("max_abs_change")})
    return pd.DataFrame(rows)
