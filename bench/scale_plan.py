"""Does planning, storing and reporting stay linear in the number of evaluation cells?

Builds synthetic grids of ~100, 250, 500 and 1000 cells (T local tasks × 5 models × 5 shot
counts × 2 formats = 50·T cells, T = 2, 5, 10, 20), and for each measures, side by side in
this one process:

  plan     build_plan(config) with a cold task registry (YAML parsing, data hashes, keys)
  run      run_experiment with fake train/evaluate backends (no model): every cell written
           to the SQLite store with its items, one transaction per cell
  resume   the same command again: re-plan + store lookups, nothing left to compute
  data     the report's data step alone (genft.report.data.collect: the store read into tidy
           tables), to tell the store's share of the report from the figures'
  report   build_report (data, tables, figures, report.html + report.md)

and prints seconds and milliseconds per cell; linear growth shows as a flat ms/cell column.
The numbers are fake (hash-derived), so only the timings mean anything.

    python bench/scale_plan.py                 # sizes 2 5 10 20 tasks (100…1000 cells)
    python bench/scale_plan.py --tasks 2 40    # other sizes

Recorded (2-core machine shared with other jobs, `--tasks 2 5 10 20 40`; the experiment
runner and report as of commit 0bfa056 + WIP)::

     cells    plan s  ms/cell     run s  ms/cell  resume s  ms/cell    data s  ms/cell  report s  ms/cell
       100      0.40     4.02      0.19     1.93      0.07     0.73      0.09     0.87      3.04    30.37
       250      0.34     1.36      0.35     1.39      0.08     0.32      0.07     0.28      5.08    20.32
       500      0.35     0.70      0.54     1.09      0.08     0.16      0.13     0.26      8.16    16.32
      1000      0.52     0.52      0.83     0.83      0.13     0.13      0.17     0.17     18.26    18.26
      2000      0.80     0.40      1.58     0.79      0.19     0.09      0.36     0.18     35.83    17.91

    100 -> 2000 cells (x20.0): plan x2.0, run x8.2, resume x2.6, data x4.1, report x11.8

Planning is dominated by its fixed cost (parsing ~30 built-in task YAMLs) and grows far
below linearly; storing (~0.8 ms a cell, its items included) and reading the store back
(data) grow linearly or less. The report grows linearly at ~18 ms a cell, nearly all of it
drawing figures (the data step is 1% of it): ~36 s for 2,000 cells.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genft.experiments.config import parse_config
from genft.experiments.plan import build_plan
from genft.experiments.runner import Backends, run_experiment
from genft.report import build_report
from genft.report.data import collect
from genft.tasks.registry import registry

METHODS = {"ft": {}, "fticl": {"shots": 1}, "lora": {}, "promot": {"stage1_steps": 2}}
SHOTS, FORMATS, LIMIT = [0, 1, 2, 4, 8], ["prompt1", "prompt2"], 4
WORDS = ["negative", "positive"]

TASK = {
    "family": "f{family}", "type": "classification",
    "source": {"kind": "local", "path": "{name}.jsonl"},
    "fields": {"input": "text"}, "label": {"column": "label", "words": WORDS},
    "metrics": ["accuracy"], "prompt1": "### Input:\n{{ input }}\n### Label:",
    "prompt2": "Text: {{ input }}\nLabel:",
    "splits": {"test": {"size": LIMIT}, "fewshot": {"size": 8}, "train": {"size": 16}},
}


def write_grid(folder: Path, n_tasks: int) -> Path:
    """n_tasks local task YAMLs + data, and a config over them; returns the config path."""
    tasks = folder / "tasks"
    tasks.mkdir(parents=True)
    names = [f"synth{i:03d}" for i in range(n_tasks)]
    for i, name in enumerate(names):
        spec = json.loads(json.dumps(TASK).replace("{name}", name).replace("{family}", str(i % 4)))
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **spec}))
        rows = [{"text": f"{name} item {j} " + "word " * (j % 7), "label": WORDS[j % 2]}
                for j in range(40)]
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"name": f"scale{n_tasks}", "include": ["tasks"], "train_tasks": [names[0]],
              "methods": METHODS, "training": {"steps": 2}, "test": names, "exclude": [],
              "shots": SHOTS, "formats": FORMATS, "limit": LIMIT}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------- fake backends


@dataclass
class _Loaded:  # what the runner reads of a loaded model
    name: str
    tokenizer: object = None
    chat_template: bool = False


@dataclass
class _Result:
    metrics: dict
    n: int
    seconds: float
    items: list = field(default_factory=list)

    def to_record(self) -> dict:
        return {"metrics": self.metrics, "n": self.n, "seconds": self.seconds}


def _unit(*parts) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def fake_backends() -> Backends:
    def train(cfg, progress=True, resume=False, on_progress=None):
        final = Path(cfg["out"]) / "final"
        final.mkdir(parents=True, exist_ok=True)
        (final / "name").write_text(cfg["method"])
        return final

    def evaluate_cell(loaded, task, shots, fmt, *, sampler, limit, batch_size, seed, scoring,
                      progress=True, backend="fast"):
        items = [{"id": f"test:{i}", "prompt_hash": f"{i:016x}",
                  "prediction": WORDS[_unit(loaded.name, task.name, shots, fmt, i) > 0.5],
                  "gold": WORDS[i % 2], "scores": None} for i in range(limit)]
        accuracy = sum(it["prediction"] == it["gold"] for it in items) / len(items)
        return _Result({"accuracy": accuracy, "f1": accuracy}, len(items), 0.0, items)

    return Backends(load_model=lambda ref, **options: _Loaded(str(ref)), train=train,
                    train_config=lambda **kw: dict(kw), param_change=lambda base, path: None,
                    evaluate_cell=evaluate_cell,
                    check_label_words=lambda task, tokenizer, scoring, chat_template: None)


# ---------------------------------------------------------------- measuring


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(n_tasks: int, root: Path) -> dict:
    folder = root / f"grid{n_tasks}"
    config = write_grid(folder, n_tasks)
    out = folder / "out"

    def plan():
        registry.cache_clear()  # cold: task YAMLs parsed, data hashed, keys computed
        cfg, cfg_dir = parse_config(config)
        return build_plan(cfg, cfg_dir)

    t_plan, p = timed(plan, repeat=3)
    cells = len(p.cells)
    quiet = dict(progress=False, backends=fake_backends(), echo=lambda s: None)  # no report
    t_run, outcome = timed(lambda: run_experiment(config, out, **quiet))
    assert outcome.computed == cells, (outcome.computed, cells)
    t_resume, again = timed(lambda: run_experiment(config, out, **quiet))
    assert again.computed == 0
    t_data, _ = timed(lambda: collect(out))
    t_report, _ = timed(lambda: build_report(out))
    return {"tasks": n_tasks, "cells": cells, "plan": t_plan, "run": t_run, "resume": t_resume,
            "data": t_data, "report": t_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 20],
                        help="grid sizes in test tasks (50 cells each)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="genft-scale-"))
    try:
        measure(1, root / "warmup")  # imports, matplotlib font cache: not part of any size
        rows = [measure(n, root) for n in args.tasks]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stages = ("plan", "run", "resume", "data", "report")
    print(f"{'cells':>6} " + " ".join(f"{s + ' s':>9} {'ms/cell':>8}" for s in stages))
    for r in rows:
        print(f"{r['cells']:>6} " + " ".join(f"{r[s]:>9.2f} {1000 * r[s] / r['cells']:>8.2f}"
                                             for s in stages))
    first, last = rows[0], rows[-1]
    growth = last["cells"] / first["cells"]
    print(f"\n{first['cells']} -> {last['cells']} cells (x{growth:.1f}): "
          + ", ".join(f"{s} x{last[s] / first[s]:.1f}" for s in stages)
          + "  (linear = the cell ratio; less = fixed costs amortized)")


if __name__ == "__main__":
    main()
