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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    items: dict[str, list[dict]]  # cell key → its stored items (id, prediction, gold)
    out: Path

    @property
    def running(self) -> bool:
        """The latest run has not finished (still going, or killed): the report is partial."""
        return bool(self.runs) and self.runs[-1]["status"] == "running"

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
    """Everything the report shows, from the store alone. Cells with no items (``limit: 0``,
    or an empty test split) are left out: they have no score to show."""
    table = load_results(out)
    table = table[table["n"] > 0]
    if "se" not in table.columns:  # stores and tables from before standard errors
        table = table.assign(se=np.nan)
    store = Store.open_existing(out)
    try:
        runs, checkpoints, predictions = store.runs(), store.checkpoints(), store.predictions()
        items: dict[str, list[dict]] = {}
        for it in store.items():
            items.setdefault(it["cell_key"], []).append(it)
    finally:
        store.close()
    tasks: dict[str, dict] = {}
    for r in runs:
        tasks.update(r["meta"].get("tasks", {}))
    normalize = runs[-1]["config"].get("normalize", "chance") if runs else "chance"
    prim = table[table["primary"].astype(bool)].copy()  # (an empty column is not boolean)
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
    return ReportData(table, prim, tasks, runs, checkpoints, predictions, normalize, items, Path(out))


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
    """Mean primary score per test set, model, format and k, with its standard error
    (NaN when any averaged cell has none)."""
    d = data.final(group)
    return d.groupby(["test_task", "model", "format", "shots"], as_index=False).agg(
        value=("value", "mean"), se=("se", combined_se))


def kshot_seeds(data: ReportData, group: str) -> pd.DataFrame:
    """Like :func:`kshot`, one row per training seed of every trained model (the base model
    has no training seed): the points behind a k-shot mean, to show the spread over seeds."""
    d = data.final(group)
    d = d[(d["model"] != "base") & d["train_seed"].notna()]
    return d.groupby(["test_task", "model", "format", "shots", "train_seed"],
                     as_index=False)["value"].mean()


SPREAD_MEASURES = {"label_answer_rate": "label answers", "empty_answer_rate": "empty answers"}


def seed_spread(data: ReportData) -> pd.DataFrame:
    """group × model × test set × measure: the value of every training seed and their mean,
    standard deviation (n − 1), min and max. Measures: the primary score (averaged over the
    evaluated shots and formats) and, on generation test sets of a classification-trained
    group, the label-answer and empty-answer rates. Final models of the largest training
    size; the base model (no training seed) is the reference row. Empty unless some model
    was trained with two or more seeds."""
    if data.prim[data.prim["model"] != "base"].groupby("model")["train_seed"].nunique().max() < 2:
        return pd.DataFrame()
    rows = []
    for group in data.groups:
        d = data.final(group)
        rated = d[d["test_type"] == "generation"] if data.group_words(group) else d.iloc[:0]
        rates = data.table[data.table["metric"].isin(SPREAD_MEASURES)
                           & data.table["cell_key"].isin(rated["cell_key"])]
        for model in model_order(d["model"]):
            m = d[d["model"] == model]
            for task, t in m.groupby("test_task", sort=False):
                measures = [("score", t)]
                r = rates[rates["cell_key"].isin(t["cell_key"])]
                measures += [(SPREAD_MEASURES[k], x) for k, x in r.groupby("metric")]
                for measure, x in measures:
                    seeds = x.groupby(x["train_seed"].fillna(-1))["value"].mean()
                    rows.append({"train tasks": group, "model": model, "test set": task,
                                 "measure": measure, "seeds": len(seeds) if model != "base" else 0,
                                 "mean": seeds.mean(),
                                 "sd": seeds.std(ddof=1) if len(seeds) > 1 else None,
                                 "min": seeds.min(), "max": seeds.max(),
                                 "per seed": ", ".join(
                                     f"{int(s)}: {v:.3f}" for s, v in seeds.items())
                                 if model != "base" else "(not trained)"})
    df = pd.DataFrame(rows)
    order = {"score": 0, "label answers": 1, "empty answers": 2}
    return df.sort_values(["train tasks", "test set", "measure"], key=lambda c: c.map(
        order) if c.name == "measure" else c, kind="stable").reset_index(drop=True)


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


# ---------------------------------------------------------------- the answer first

RELATIONS = ("in-domain", "out-of-domain", "cross-task")
PER_ITEM_METRICS = ("accuracy", "rouge_l", "exact_match", "token_f1")  # a mean over items


def combined_se(se: pd.Series) -> float:
    """Standard error of a mean of independent estimates: sqrt(sum se²) / n (NaN if any is
    unknown: no bar is better than a wrong one)."""
    se = se.astype(float)
    if se.empty or se.isna().any():
        return math.nan
    return math.sqrt((se ** 2).sum()) / len(se)


def answer(data: ReportData) -> pd.DataFrame:
    """group × method: the change of the mean normalized score from the base model's, per
    relation, with the paired comparison on the same items where per-item scores allow it."""
    rows = []
    for group in data.groups:
        d = data.final(group)
        base = d[d["model"] == "base"]
        for model in model_order(d["model"]):
            if model == "base":
                continue
            m = d[d["model"] == model]
            row = {"train tasks": group, "model": model}
            for rel in RELATIONS:
                row[rel] = _relation_change(data, m[m["relation"] == rel],
                                            base[base["relation"] == rel])
            rows.append(row)
    return pd.DataFrame(rows)


def _relation_change(data: ReportData, m: pd.DataFrame, base: pd.DataFrame) -> str | None:
    if m.empty or base.empty:
        return None
    mine = m.groupby("test_task")["normalized"].mean()
    ref = base.groupby("test_task")["normalized"].mean()
    common = mine.index.intersection(ref.index)
    if common.empty:
        return None
    text = f"{(mine[common] - ref[common]).mean():+.1f}"
    paired = paired_change(data, m, base)
    if paired is not None:
        diff, se, p = paired
        text += f" (paired Δ {diff:+.3f} ± {se:.3f}, p = {p:.2g})"
    return text


def paired_change(data: ReportData, m: pd.DataFrame, base: pd.DataFrame):
    """Method vs base on the same items (same test set, shots, format, item id): the mean
    per-item difference of the primary metric, its standard error and p-value from
    genft.stats.paired_bootstrap; None when that module or per-item scores are missing."""
    try:
        from genft.stats import paired_bootstrap
    except ImportError:
        return None
    ref = {(r.test_task, r.shots, r.format): r.cell_key for r in base.itertuples()}
    a, b = [], []
    for r in m.itertuples():
        base_key = ref.get((r.test_task, r.shots, r.format))
        if base_key is None or r.metric not in PER_ITEM_METRICS:
            continue
        base_scores = item_scores(data, base_key, r.metric, r.test_task)
        for item_id, score in item_scores(data, r.cell_key, r.metric, r.test_task).items():
            if item_id in base_scores:
                a.append(score)
                b.append(base_scores[item_id])
    if len(a) < 2:
        return None
    return paired_bootstrap(a, b)


def item_scores(data: ReportData, cell_key: str, metric: str, task: str) -> dict[str, float]:
    """item id → the metric on that item alone (for metrics that are a mean over items)."""
    from genft.evaluation.metrics import compute

    labels = data.tasks.get(task, {}).get("labels", [])
    return {it["item_id"]: compute([metric], [it["prediction"] or ""], [it["gold"] or ""],
                                   labels)[metric]
            for it in data.items.get(cell_key, [])}


def examples(data: ReportData, group: str, per_cell: int = 3) -> dict[str, pd.DataFrame]:
    """Per cross-task test set: a few items with the gold answer, the base model's answer and
    each method's answer side by side (same shots, format and item; first seed)."""
    d = data.final(group).sort_values(["shots", "format"])
    out = {}
    for task in dict.fromkeys(d[d["relation"] == "cross-task"]["test_task"]):
        t = d[d["test_task"] == task]
        base = t[t["model"] == "base"]
        if base.empty:
            continue
        shots, fmt = base["shots"].iloc[0], base["format"].iloc[0]
        t = t[(t["shots"] == shots) & (t["format"] == fmt)]
        keys = {m: t[t["model"] == m].sort_values("train_seed")["cell_key"].iloc[0]
                for m in model_order(t["model"])}
        answers = {m: {it["item_id"]: it["prediction"] for it in data.items.get(k, [])}
                   for m, k in keys.items()}
        rows = [{"item": it["item_id"], "gold": _short(it["gold"]),
                 **{m: _short(a[it["item_id"]]) if it["item_id"] in a else "–"
                    for m, a in answers.items()}}
                for it in data.items.get(keys["base"], [])[:per_cell]]
        out[f"{task} ({shots}-shot, {fmt})"] = pd.DataFrame(rows)
    return out


def _short(text: str | None, limit: int = 90) -> str:
    text = " ".join((text or "").split())
    return (text[:limit - 1] + "…") if len(text) > limit else (text or "(empty)")


def rates(data: ReportData) -> pd.DataFrame:
    """group × model × generation test set: the stored label-answer rates (loose, and strict
    when stored), the empty-answer rate and the score, final models only."""
    names = {"label_answer_rate": "label answers", "label_answer_rate_strict":
             "label answers (strict)", "empty_answer_rate": "empty answers"}
    t = data.table[data.table["metric"].isin(names) & data.table["step"].isna()]
    rows = []
    for group in data.groups:
        if not data.group_words(group):
            continue
        d = data.final(group)
        d = d[d["test_type"] == "generation"]
        for model in model_order(d["model"]):
            for task, x in d[d["model"] == model].groupby("test_task"):
                r = t[t["cell_key"].isin(x["cell_key"])]
                row = {"train tasks": group, "model": model, "test set": task,
                       "relation": x["relation"].iloc[0]}
                row.update({names[k]: v for k, v in r.groupby("metric")["value"].mean().items()})
                row.update({"score": x["value"].mean(), "items": int(x["n"].sum())})
                rows.append(row)
    cols = ["train tasks", "model", "test set", "relation", *names.values(), "score", "items"]
    df = pd.DataFrame(rows)
    return df[[c for c in cols if c in df.columns]]


def chance_levels(data: ReportData) -> pd.DataFrame:
    """The chance level each classification test set's normalized score used, read back from
    the stored values (normalized = (v − c) / (1 − c) × 100), so the report states the rule
    that was applied rather than the one it expects."""
    rows = []
    p = data.table[data.table["primary"] & (data.table["test_type"] == "classification")]
    for task, d in p.groupby("test_task"):
        n = d["normalized"].astype(float) / 100
        ok = (n - 1).abs() > 1e-9
        c = ((d["value"][ok] - n[ok]) / (1 - n[ok])).median() if ok.any() else math.nan
        labels = data.tasks.get(task, {}).get("labels", [])
        rows.append({"test set": task, "metric": d["metric"].iloc[0], "chance": c,
                     "label words": len(labels)})
    return pd.DataFrame(rows)


def jobs(data: ReportData) -> pd.DataFrame:
    """One row per training job (its final checkpoint): method, tasks, size, seed, the
    settings in which jobs differ, training seconds and truncation counts when stored."""
    final = [c for c in data.checkpoints if c["step"] is None]
    if not final:
        return pd.DataFrame()
    settings = [{k: v for k, v in (c["settings"] or {}).items()
                 if isinstance(v, (int, float, str, bool)) or v is None} for c in final]
    varying = [k for k in dict.fromkeys(k for s in settings for k in s)
               if len({json.dumps(s.get(k)) for s in settings}) > 1 and k not in SHOWN]
    rows = []
    for c, s in sorted(zip(final, settings), key=lambda x: (x[0]["label"], x[0]["seed"])):
        row = {"model": c["label"], "train tasks": "+".join(c["tasks"]),
               "size": c["train_size"] if c["train_size"] is not None else "all", "seed": c["seed"],
               **{k: s.get(k) for k in HYPER if k in s}, **{k: s.get(k) for k in varying},
               "train seconds": c["seconds"]}
        row.update(truncation(data, c))
        rows.append(row)
    return pd.DataFrame(rows)


SHOWN = {"method", "tasks", "train_size", "seed", "out", "model", "include"}
HYPER = ("steps", "lr", "batch_size", "max_length", "shots")


def truncation(data: ReportData, ckpt: dict) -> dict:
    """The trainer's truncation counts of a job ({shortened, skipped, total}) from its store
    row or its checkpoint metadata; {} when neither has them (older runs)."""
    counts = ckpt.get("truncation")
    if counts is None:
        meta = _inside(data.out, Path(ckpt["path"]) / "genft_checkpoint.json")
        if meta is not None:
            try:
                counts = json.loads(meta.read_text()).get("truncation")
            except (OSError, ValueError):
                counts = None
    if not isinstance(counts, dict):
        return {}
    return {f"{k} (truncation)": counts.get(k) for k in ("shortened", "skipped", "total")}


def train_logs(data: ReportData) -> dict[str, pd.DataFrame]:
    """Per training job: its train_log.jsonl (one row per step: stage, step, loss; ProMoT's
    stage-1 dev loss as rows with ``dev_loss``), read from the job's folder in the run."""
    logs = {}
    for c in sorted(data.checkpoints, key=lambda c: (c["label"], c["seed"])):
        if c["step"] is not None:
            continue
        path = _inside(data.out, Path(c["path"]).parent / "train_log.jsonl")
        if path is None:
            continue
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a killed trainer
        if rows:
            size = c["train_size"] if c["train_size"] is not None else "all"
            logs[f"{c['label']} ({'+'.join(c['tasks'])}, size {size}, seed {c['seed']})"] = \
                pd.DataFrame(rows)
    return logs


def _inside(out: Path, path: Path) -> Path | None:
    """``path`` if it is a file inside the run folder (paths come from the store, which a
    report must not follow elsewhere), else None."""
    try:
        resolved = path.resolve()
        resolved.relative_to(out.resolve())
    except (ValueError, OSError):
        return None
    return resolved if resolved.is_file() else None


def per_layer(data: ReportData) -> pd.DataFrame:
    """model × layer: relative parameter change, from genft.training.diff's per-layer numbers
    (``by_layer``: layer → stats) when stored."""
    rows = []
    for c in data.checkpoints:
        layers = (c.get("param_change") or {}).get("by_layer")
        if c["step"] is not None or not isinstance(layers, dict):
            continue
        for layer, stats in layers.items():
            if isinstance(stats, dict):
                rows.append({"model": c["label"], "train tasks": "+".join(c["tasks"]),
                             "size": c["train_size"] if c["train_size"] is not None else "all",
                             "seed": c["seed"], "layer": int(layer),
                             "relative change": stats.get("relative_change"),
                             "mean |Δ|": stats.get("mean_abs_change")})
    return pd.DataFrame(rows)
