"""The tidy results table: one row per (cell, metric), ready for pandas (and the per-item
table, one row per (cell, test item): :func:`load_items`).

Besides the metrics the evaluator stored, every generation cell gets two derived
ones computed from its per-item predictions:

* ``label_answer_rate`` — format specialization, *loose*: the share of predictions whose
  first word is one of the training tasks' label words. The answer is cut at its first
  blank line, and the first word is lower-cased and stripped of surrounding punctuation,
  so "Negative sentiment", "negative.\n### Input…" and "POSITIVE!" all count.
* ``label_answer_rate_strict`` — the same, but the whole normalized answer (lower-cased,
  stripped of surrounding whitespace and punctuation) must be exactly a label word.
  For a trained model the words are its own training tasks'; for the base model, those
  of every classification task trained in the experiment (its reference rate).
* ``empty_answer_rate`` — the share of empty predictions.

The primary metric of a test set (its task YAML's first metric) also gets
``normalized``: (score − chance) / (perfect − chance) × 100 (or score / perfect × 100
when the config says ``normalize: raw``). Chance is the task's ``chance:`` if its YAML
sets one, else 1 / the number of gold classes present in the test split for
classification, 0 for generation. Stores written before the chance was recorded fall
back to 1 / the number of label words.

``se`` is the standard error of ``value`` (:mod:`genft.stats`): binomial for accuracy,
exact match and the rates, bootstrap over items for ROUGE-L, BLEU, token F1 and macro-F1;
``normalized`` rows scale it like the value. NaN for cells stored by a genft that kept none.

Provenance columns: ``data_hash`` (the test data the cell read), ``config_hash`` (the
experiment config of the run that computed it) and ``truncated`` (items whose prompt was
cut to the model's window); empty for cells stored by an older genft.
"""

from __future__ import annotations

import json
import math
import string
import sys
from pathlib import Path

import pandas as pd

from genft.errors import GenftError
from genft.experiments.store import Store
from genft.stats import binomial_se, paired_bootstrap

PERFECT: dict[str, float] = {}  # the evaluator reports every metric in [0, 1] (BLEU / 100 too)
DERIVED = ("label_answer_rate", "label_answer_rate_strict", "empty_answer_rate")
_EDGES = string.punctuation + string.whitespace


def normalize_answer(text: str) -> str:
    return (text or "").strip().strip(_EDGES).lower()


def first_word(text: str) -> str:
    """The answer's first word, as the loose label-answer rate reads it: the text up to its
    first blank line, first whitespace-separated word, punctuation stripped, lower-cased."""
    words = (text or "").split("\n\n", 1)[0].split()
    return words[0].strip(_EDGES).lower() if words else ""


def label_answer_rate(predictions: list[str], words: list[str], strict: bool = False
                      ) -> float | None:
    """Share of predictions that are a label word: the first word (loose) or the whole
    normalized answer (``strict``)."""
    if not predictions or not words:
        return None
    targets = {w.lower() for w in words}
    read = normalize_answer if strict else first_word
    return sum(read(p) in targets for p in predictions) / len(predictions)


def empty_answer_rate(predictions: list[str]) -> float | None:
    if not predictions:
        return None
    return sum(not (p or "").strip() for p in predictions) / len(predictions)


def relation(test_family: str, test_domain: str | None, train_families: set) -> str:
    """A test set's relation to a model, from the model's training tasks' families:
    in-domain (same family, task ``domain: in``), out-of-domain (same family, ``domain: out``)
    or cross-task (another family)."""
    if test_family in train_families:
        return "in-domain" if (test_domain or "in") == "in" else "out-of-domain"
    return "cross-task"


def chance_level(metric: str, task: dict) -> float:
    """The task's recorded chance (its ``chance:`` or 1 / gold classes in the test split);
    stores from before it was recorded: 1 / label words (classification), else 0."""
    if task.get("chance") is not None:
        return float(task["chance"]) * PERFECT.get(metric, 1.0)
    if task.get("type") == "classification" and task.get("labels"):
        return PERFECT.get(metric, 1.0) / len(task["labels"])
    return 0.0


def normalized_score(value: float, metric: str, task: dict, mode: str = "chance") -> float:
    perfect = PERFECT.get(metric, 1.0)
    chance = chance_level(metric, task) if mode == "chance" else 0.0
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
           "data_hash", "config_hash", "metric", "value", "se", "primary", "normalized"]


def _cells(store: Store, all_cells: bool = False):
    """Each stored cell of the latest run's plan (every cell with ``all_cells``), as
    (cell row, its coordinate columns, its task's description, its checkpoint row or None)."""
    runs = store.runs()
    planned = next((set(r["planned"]) for r in reversed(runs) if r["planned"]), None)
    tasks: dict[str, dict] = {}
    for r in runs:  # later runs' descriptions win
        tasks.update(r["meta"].get("tasks", {}))
    ckpts = {c["key"]: c for c in store.checkpoints()}
    for cell in sorted(store.cells(), key=_config_order(runs)):
        if planned is not None and not all_cells and cell["key"] not in planned:
            continue  # from an earlier version of the config (or of the data)
        ck = ckpts.get(cell["model_key"])
        prov = cell["provenance"]  # {} for cells stored before provenance was kept
        task = tasks.get(cell["task"], {"family": cell["family"], "type": cell["type"]})
        train_tasks = ck["tasks"] if ck else []
        train_families = {tasks.get(t, {}).get("family") for t in train_tasks}
        rel = relation(cell["family"], task.get("domain"), train_families) if ck else None
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
        yield cell, base, task, ck


def _config_order(runs: list[dict]):
    """Sort key for cells: base first, then the latest config's methods in the order it lists
    them (labels it no longer lists last), so tables and the report read as the config does,
    not in the order a resumed or parallel run happened to store the cells. Stable within."""
    labels = ["base", *(runs[-1]["config"].get("methods") or {})] if runs else ["base"]
    rank = {label: i for i, label in enumerate(labels)}
    return lambda cell: rank.get(cell["model_label"], len(rank))


def _primary(cell: dict, task: dict) -> str | None:
    """The cell's primary metric: its task's first, else the first the cell stored."""
    primary = (task.get("metrics") or [None])[0]
    metrics = [k for k, v in cell["metrics"].items() if isinstance(v, (int, float))]
    return primary if primary in metrics or not metrics else metrics[0]


def _table(store: Store, all_cells: bool = False) -> pd.DataFrame:
    runs = store.runs()
    mode = runs[-1]["config"].get("normalize", "chance") if runs else "chance"
    all_words = sorted({w for c in store.checkpoints() for w in c["answer_words"]})
    preds = store.predictions()
    rows = []
    for cell, base, task, ck in _cells(store, all_cells):
        prov = cell["provenance"]
        primary = _primary(cell, task)
        metrics = {k: v for k, v in cell["metrics"].items() if isinstance(v, (int, float))}
        errors = dict(prov.get("info", {}).get("se") or {})
        if cell["type"] == "generation":
            p = preds.get(cell["key"], [])
            words = ck["answer_words"] if ck else all_words
            metrics["label_answer_rate"] = label_answer_rate(p, words)
            metrics["label_answer_rate_strict"] = label_answer_rate(p, words, strict=True)
            metrics["empty_answer_rate"] = empty_answer_rate(p)
            for name in DERIVED:
                if metrics[name] is not None:
                    errors[name] = binomial_se(metrics[name], len(p))
        for metric, value in metrics.items():
            if value is None:
                continue
            is_primary = metric == primary
            se = errors.get(metric)
            se = math.nan if se is None else float(se)
            normalized = normalized_score(value, metric, task, mode) if is_primary else None
            rows.append({**base, "metric": metric, "value": float(value), "se": se,
                         "primary": is_primary, "normalized": normalized})
    return _with_int_columns(pd.DataFrame(rows, columns=COLUMNS))


def _with_int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable integers (a base model has no train size), not floats."""
    for col in ("train_size", "train_seed", "step", "limit", "truncated"):
        df[col] = df[col].astype("Int64")
    return df


def item_score(item: dict, metric: str) -> float | None:
    """One stored item's score on ``metric``: correctness for accuracy (classification), else
    the per-item score the evaluator stored (best match over references), else None."""
    if metric == "accuracy":
        return float(item["prediction"] == item["gold"])
    if isinstance(item["scores"], dict) and metric in item["scores"]:
        return float(item["scores"][metric])
    return None


def item_scores(store: Store, cell_key: str, metric: str) -> dict[str, float]:
    """One cell's per-item scores by item id (the items :func:`item_score` can score)."""
    scores = {it["item_id"]: item_score(it, metric) for it in store.items(cell_key)}
    return {k: v for k, v in scores.items() if v is not None}


ITEM_COLUMNS = [*COLUMNS[:COLUMNS.index("metric")], "item_index", "item_id", "prompt_hash",
                "prediction", "gold", "metric", "score", "scores"]


def load_items(out: str | Path, all_cells: bool = False) -> pd.DataFrame:
    """Per-item predictions: one row per (cell, item), with the cell's coordinates (as in the
    tidy table), the item's id, prompt hash, prediction and gold answer, ``score`` (its score
    on the cell's primary ``metric`` where one is stored: correctness for accuracy, the
    evaluator's per-item score otherwise) and ``scores`` (what the evaluator stored per item,
    as JSON: label log-probabilities for classification, per-metric scores for generation)."""
    store = Store.open_existing(out)
    try:
        rows = []
        for cell, base, task, _ in _cells(store, all_cells):
            metric = _primary(cell, task)
            for it in store.items(cell["key"]):
                rows.append({**base, "item_index": it["idx"], "item_id": it["item_id"],
                             "prompt_hash": it["prompt_hash"], "prediction": it["prediction"],
                             "gold": it["gold"], "metric": metric,
                             "score": item_score(it, metric) if metric else None,
                             "scores": json.dumps(it["scores"]) if it["scores"] is not None
                             else None})
    finally:
        store.close()
    df = _with_int_columns(pd.DataFrame(rows, columns=ITEM_COLUMNS))
    df["score"] = df["score"].astype("float64")
    return df


def paired_comparison(out: str | Path | Store, cell_a: str, cell_b: str, metric: str, *,
                      seed: int = 0, n_boot: int = 1000) -> dict:
    """Cell ``a`` (e.g. a method) vs cell ``b`` (e.g. the base model) on the items both
    scored, matched by item id: ``{"diff", "se", "p_value", "n"}`` (a − b; paired bootstrap).
    Only metrics that are a mean over items pair up (accuracy, exact_match, rouge_l,
    token_f1); for others ``n`` is 0 and the numbers NaN."""
    store = out if isinstance(out, Store) else Store.open_existing(out)
    try:
        a, b = item_scores(store, cell_a, metric), item_scores(store, cell_b, metric)
    finally:
        if store is not out:
            store.close()
    shared = sorted(set(a) & set(b))
    diff, se, p = paired_bootstrap([a[i] for i in shared], [b[i] for i in shared], seed=seed,
                                   n_boot=n_boot)
    return {"diff": diff, "se": se, "p_value": p, "n": len(shared)}


def export_results(out: str | Path, dest: str | Path | None = None, *, to: str | None = None,
                   all_cells: bool = False, items: bool = False) -> Path | None:
    """Write the tidy results of ``out`` (with ``items``: the per-item predictions,
    :func:`load_items`) to ``dest`` (default OUT/results.csv, OUT/items.csv with ``items``;
    ``"-"``: standard output, returning None) as ``to`` (csv, json, parquet; default:
    ``dest``'s suffix, else csv). Returns the file written."""
    fmt = to or _file_type(dest)
    df = load_items(out, all_cells) if items else load_results(out, all_cells)
    if str(dest) == "-":
        if fmt == "parquet":
            sys.stdout.flush()
            df.to_parquet(sys.stdout.buffer, index=False)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(_table_text(df, fmt))
            sys.stdout.flush()
        return None
    dest = Path(dest) if dest else Path(out) / f"{'items' if items else 'results'}.{fmt}"
    try:
        if fmt == "parquet":
            df.to_parquet(dest, index=False)
        else:
            dest.write_text(_table_text(df, fmt))
    except OSError as e:
        raise GenftError(f"{dest}: cannot write the results ({e.strerror or e})") from None
    return dest


FILE_TYPES = ("csv", "json", "parquet")


def _file_type(dest: str | Path | None) -> str:
    if dest is None or str(dest) == "-":
        return "csv"
    suffix = Path(dest).suffix.lstrip(".").lower()
    if suffix not in FILE_TYPES:
        raise GenftError(f"-o {dest}: cannot tell the file type from its suffix; name it "
                         f".csv, .json or .parquet, or give --to {'|'.join(FILE_TYPES)}")
    return suffix


def _table_text(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    return json.dumps(json.loads(df.to_json(orient="records")), indent=1) + "\n"
