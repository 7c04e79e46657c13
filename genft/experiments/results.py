"""The tidy results table: one row per (cell, metric), ready for pandas.

Besides the metrics the evaluator stored, every generation cell gets two derived
ones computed from its per-item predictions:

* ``label_answer_rate`` — format specialization: the share of predictions whose
  normalized text (lower-cased, stripped of surrounding whitespace and
  punctuation) is exactly one of the training tasks' label words. For a trained
  model the words are its own training tasks'; for the base model, those of every
  classification task trained in the experiment (its reference rate).
* ``empty_answer_rate`` — the share of empty predictions.

The primary metric of a test set (its task YAML's first metric) also gets
``normalized``: (score − chance) / (perfect − chance) × 100, chance = 1/number of
labels for classification and 0 for generation (or score / perfect × 100 when
the config says ``normalize: raw``).

Provenance columns: ``data_hash`` (the test data the cell read), ``config_hash`` (the
experiment config of the run that computed it) and ``truncated`` (items whose prompt was
cut to the model's window); empty for cells stored by an older genft.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pandas as pd

from genft.errors import GenftError
from genft.experiments.store import Store

PERFECT: dict[str, float] = {}  # the evaluator reports every metric in [0, 1] (BLEU / 100 too)
DERIVED = ("label_answer_rate", "empty_answer_rate")


def normalize_answer(text: str) -> str:
    return (text or "").strip().strip(string.punctuation + string.whitespace).lower()


def label_answer_rate(predictions: list[str], words: list[str]) -> float | None:
    if not predictions or not words:
        return None
    targets = {w.lower() for w in words}
    return sum(normalize_answer(p) in targets for p in predictions) / len(predictions)


def empty_answer_rate(predictions: list[str]) -> float | None:
    if not predictions:
        return None
    return sum(not (p or "").strip() for p in predictions) / len(predictions)


def normalized_score(value: float, metric: str, task: dict, mode: str = "chance") -> float:
    perfect = PERFECT.get(metric, 1.0)
    chance = 0.0
    if mode == "chance" and task.get("type") == "classification" and task.get("labels"):
        chance = perfect / len(task["labels"])
    return (value - chance) / (perfect - chance) * 100


def load_results(out: str | Path, all_cells: bool = False) -> pd.DataFrame:
    """The tidy table of an output directory (see the module docstring for derived metrics):
    the cells of the latest run's plan, or every cell ever stored with ``all_cells``."""
    store = Store.open_existing(out)
    try:
        return _table(store, all_cells)
    finally:
        store.close()


COLUMNS = ["cell_key", "model_key", "model", "method", "train_tasks", "train_size", "train_seed",
           "step", "test_task", "test_family", "test_type", "test_domain", "relation", "shots",
           "format", "sampler", "scoring", "limit", "eval_seed", "n", "truncated", "seconds",
           "data_hash", "config_hash", "metric", "value", "primary", "normalized"]


def _table(store: Store, all_cells: bool = False) -> pd.DataFrame:
    runs = store.runs()
    planned = next((set(r["planned"]) for r in reversed(runs) if r["planned"]), None)
    tasks: dict[str, dict] = {}
    for r in runs:  # later runs' descriptions win
        tasks.update(r["meta"].get("tasks", {}))
    mode = runs[-1]["config"].get("normalize", "chance") if runs else "chance"
    ckpts = {c["key"]: c for c in store.checkpoints()}
    all_words = sorted({w for c in ckpts.values() for w in c["answer_words"]})
    preds = store.predictions()
    rows = []
    for cell in store.cells():
        if planned is not None and not all_cells and cell["key"] not in planned:
            continue  # from an earlier version of the config (or of the data)
        ck = ckpts.get(cell["model_key"])
        prov = cell["provenance"]  # {} for cells stored before provenance was kept
        task = tasks.get(cell["task"], {"family": cell["family"], "type": cell["type"]})
        train_tasks = ck["tasks"] if ck else []
        train_families = {tasks.get(t, {}).get("family") for t in train_tasks}
        if ck is None:
            rel = None
        elif cell["family"] in train_families:
            rel = "in-domain" if task.get("domain", "in") == "in" else "out-of-domain"
        else:
            rel = "cross-task"
        base = {
            "cell_key": cell["key"], "model_key": cell["model_key"], "model": cell["model_label"],
            "method": ck["method"] if ck else "base", "train_tasks": "+".join(train_tasks) or None,
            "train_size": ck["train_size"] if ck else None, "train_seed": ck["seed"] if ck else None,
            "step": ck["step"] if ck else None, "test_task": cell["task"],
            "test_family": cell["family"], "test_type": cell["type"],
            "test_domain": task.get("domain"), "relation": rel, "shots": cell["shots"],
            "format": cell["format"], "sampler": cell["sampler"], "scoring": cell["scoring"],
            "limit": cell["limit_n"], "eval_seed": cell["seed"], "n": cell["n"],
            "truncated": prov.get("info", {}).get("truncated"), "seconds": cell["seconds"],
            "data_hash": prov.get("data_hash") or prov.get("info", {}).get("data_hash"),
            "config_hash": prov.get("config_hash"),
        }
        primary = (task.get("metrics") or [None])[0]
        metrics = {k: v for k, v in cell["metrics"].items() if isinstance(v, (int, float))}
        if primary not in metrics and metrics:
            primary = next(iter(metrics))
        if cell["type"] == "generation":
            p = preds.get(cell["key"], [])
            metrics["label_answer_rate"] = label_answer_rate(p, ck["answer_words"] if ck else all_words)
            metrics["empty_answer_rate"] = empty_answer_rate(p)
        for metric, value in metrics.items():
            if value is None:
                continue
            is_primary = metric == primary
            rows.append({**base, "metric": metric, "value": float(value), "primary": is_primary,
                         "normalized": normalized_score(value, metric, task, mode) if is_primary
                         else None})
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("train_size", "train_seed", "step", "limit", "truncated"):
        df[col] = df[col].astype("Int64")
    return df


def export_results(out: str | Path, fmt: str, dest: str | Path | None = None,
                   all_cells: bool = False) -> Path:
    df = load_results(out, all_cells)
    dest = Path(dest) if dest else Path(out) / f"results.{fmt}"
    try:
        if fmt == "csv":
            df.to_csv(dest, index=False)
        elif fmt == "json":
            dest.write_text(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
        elif fmt == "parquet":
            df.to_parquet(dest, index=False)
        else:
            raise ValueError(fmt)
    except OSError as e:
        raise GenftError(f"{dest}: cannot write the results ({e.strerror or e})") from None
    return dest
