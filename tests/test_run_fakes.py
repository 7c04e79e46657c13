"""Fake training/evaluation backends for the runner's tests: deterministic, fast, and
optionally slow on purpose (so a test can kill a run mid-training or mid-evaluation).

Run as a script, it executes a config with these fakes:
    python tests/test_run_fakes.py CONFIG OUT [SLEEP_SECONDS [report]]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from genft.experiments.runner import Backends


@dataclass
class FakeLoaded:
    name: str
    tokenizer: object = None
    chat_template: bool = False


@dataclass
class FakeResult:
    metrics: dict
    n: int
    seconds: float
    items: list = field(default_factory=list)

    def to_record(self) -> dict:
        return {"metrics": self.metrics, "n": self.n, "seconds": self.seconds}


def _unit(*parts) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def make_backends(sleep: float = 0.0, calls: list | None = None) -> Backends:
    calls = calls if calls is not None else []

    def train_config(**kw):
        return dict(kw)

    def train(cfg, progress=True, resume=False, on_progress=None):
        calls.append(("train", cfg["method"], resume))
        out = Path(cfg["out"])
        out.mkdir(parents=True, exist_ok=True)
        every = cfg.get("save_every")
        for step in range(1, cfg["steps"] + 1):
            time.sleep(sleep / 4)
            with open(out / "train_log.jsonl", "a") as log:  # the trainer's per-step log
                log.write(json.dumps({"stage": "train", "step": step, "loss": 2.0 / step}) + "\n")
            if every and step % every == 0 and step < cfg["steps"]:
                d = out / "checkpoints" / f"step-{step:06d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "meta.json").write_text(json.dumps({"method": cfg["method"], "step": step,
                                                         "tasks": cfg["tasks"]}))
            if on_progress:
                on_progress(step / cfg["steps"])
        final = out / "final"
        final.mkdir(exist_ok=True)
        (final / "meta.json").write_text(json.dumps({"method": cfg["method"], "step": cfg["steps"],
                                                     "tasks": cfg["tasks"]}))
        return final

    def load_model(ref):
        calls.append(("load", ref))
        meta = Path(ref) / "meta.json"
        return FakeLoaded(meta.read_text() if meta.is_file() else "base")

    def evaluate_cell(loaded, task, shots, fmt, *, sampler, limit, batch_size, seed, scoring="loglik",
                      progress=True, backend="fast"):
        calls.append(("eval", task.name, shots, fmt))
        time.sleep(sleep)
        n = limit or 10
        info = json.loads(loaded.name) if loaded.name != "base" else {"method": "base", "step": 0}
        score = round(_unit(loaded.name, task.name, shots, fmt), 6)
        items = []
        for i in range(n):
            if task.type == "generation":
                # the fake "fine-tuned" model answers with a label word ever more often
                label = info["method"] == "ft" and _unit(info["step"], i) < min(1.0, info["step"] / 4)
                pred = "negative" if label else f"headline {i}"
            else:
                pred = task.labels[i % len(task.labels)]
            items.append({"id": f"test:{i}", "prompt_hash": "h", "prediction": pred, "gold": "g",
                          "scores": [0.1, 0.2]})
        metric = task.spec.metrics[0]
        return FakeResult({metric: score, "extra": 0.5}, n, 0.01, items)

    def param_change(base, path):
        stats = {"params": 10, "mean_abs_change": 1e-4, "relative_change": 0.01, "max_abs_change": 0.1}
        return {"overall": stats, "by_module": {"q_proj": stats, "down_proj": stats}}

    return Backends(load_model=load_model, train=train, train_config=train_config,
                    param_change=param_change, evaluate_cell=evaluate_cell,
                    check_label_words=lambda task, tokenizer, scoring, chat_template: None)


if __name__ == "__main__":
    from genft.api import run
    from genft.errors import GenftError

    config, out = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    report = len(sys.argv) > 4 and sys.argv[4] == "report"
    try:  # what genft.cli.main does with these exceptions
        run(config, out, backends=make_backends(delay), progress=False, report=report,
            echo=lambda s: None)
    except GenftError as e:
        print(f"genft: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("genft: interrupted; finished results are saved", file=sys.stderr)
        sys.exit(130)
