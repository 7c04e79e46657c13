"""`genft run`: complete, resumable, never computing a cell twice, refusing a busy directory.

Most tests use the fake backends of tests/test_run_fakes.py (the runner's logic, fast);
test_genft_run_end_to_end runs the real trainer and evaluator on a tiny config, and the
slow kill test does the same across SIGKILLs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import genft.api
from genft.cli import main
from genft.errors import GenftError
from genft.experiments.plan import build_plan
from genft.experiments.results import load_results
from genft.experiments.config import ExperimentConfig
from genft.experiments.runner import run_experiment
from genft.experiments.store import OutputLock, Store
from test_run_fakes import make_backends

HERE = Path(__file__).parent

TINY = {
    "name": "tiny",
    "train_tasks": ["tweet_sentiment"],
    "methods": {"ft": {}, "fticl": {"shots": 1}},
    "training": {"steps": 4, "batch_size": 2, "max_length": 128},
    "test": ["tweet_sentiment", "bbc_headline"],
    "shots": {"sentiment": [0, 2], "summarization": [1]},
    "limit": 6,
    "checkpoints": {"every": 2},
}


def write_config(tmp_path: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def table(out: Path) -> dict[str, tuple]:
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("SELECT key, model_key, task, shots, format, metrics, n FROM cells").fetchall()
    assert len(rows) == len({r[0] for r in rows})
    return {r[0]: r[1:] for r in rows}


def item_rows(out: Path) -> list[tuple]:
    db = sqlite3.connect(out / "results.db")
    return db.execute("SELECT cell_key, idx, prediction FROM items ORDER BY cell_key, idx").fetchall()


def test_run_computes_every_planned_cell_once_then_nothing(tmp_path):
    cfg = write_config(tmp_path, TINY)
    calls = []
    outcome = genft.api.run(cfg, tmp_path / "out", backends=make_backends(calls=calls),
                            progress=False, echo=lambda s: None)
    plan = build_plan(ExperimentConfig.model_validate(TINY))
    # base + 2 trained models: 3 test cells each; 1 intermediate step (2 of 4) per job: 1 cell
    assert len(plan.cells) == 3 * 3 + 2 * 1
    assert outcome.computed == len(plan.cells) and outcome.trained == 2
    stored = table(tmp_path / "out")
    assert set(stored) == {c.key for c in plan.cells}
    assert len(item_rows(tmp_path / "out")) == sum(r[-1] for r in stored.values())
    assert (tmp_path / "out" / "report.html").is_file()
    assert "cell " in (tmp_path / "out" / "genft.log").read_text()

    calls.clear()
    again = run_experiment(cfg, tmp_path / "out", backends=make_backends(calls=calls),
                           progress=False, echo=lambda s: None)
    assert again.computed == 0 and again.trained == 0
    assert calls == []  # no model even loaded
    assert table(tmp_path / "out") == stored


def test_editing_the_config_computes_only_the_new_cells(tmp_path):
    out = tmp_path / "out"
    run_experiment(write_config(tmp_path, TINY), out, backends=make_backends(), progress=False,
                   echo=lambda s: None)
    before = table(out)
    bigger = {**TINY, "formats": ["prompt1", "prompt2"]}
    calls = []
    outcome = run_experiment(write_config(tmp_path, bigger, "b.yaml"), out,
                             backends=make_backends(calls=calls), progress=False,
                             echo=lambda s: None)
    after = table(out)
    assert set(before) < set(after)
    assert outcome.computed == len(after) - len(before)
    assert all(after[k] == v for k, v in before.items())
    assert not any(c[0] == "train" for c in calls)  # formats do not change training
    # going back to the smaller config computes nothing; results show its plan only
    again = run_experiment(write_config(tmp_path, TINY), out, backends=make_backends(),
                           progress=False, echo=lambda s: None)
    assert again.computed == 0
    assert set(load_results(out)["cell_key"]) == set(before)
    assert set(load_results(out, all_cells=True)["cell_key"]) == set(after)


def test_tables_list_models_in_the_config_order_not_the_order_they_were_stored(tmp_path):
    """A method added at the front of a config and resumed is stored last but listed first."""
    out = tmp_path / "out"
    later_first = {**TINY, "methods": {"ft": {}}}
    run_experiment(write_config(tmp_path, later_first), out, backends=make_backends(),
                   progress=False, echo=lambda s: None)
    both = {**TINY, "methods": {"fticl": {"shots": 1}, "ft": {}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(both, sort_keys=False))
    run_experiment(tmp_path / "b.yaml", out, backends=make_backends(),
                   progress=False, echo=lambda s: None)
    stored = [r[0] for r in sqlite3.connect(out / "results.db").execute(
        "SELECT model_label FROM cells ORDER BY rowid")]
    assert list(dict.fromkeys(stored)) == ["base", "ft", "fticl"]
    assert list(dict.fromkeys(load_results(out)["model"])) == ["base", "fticl", "ft"]
    assert list(dict.fromkeys(genft.api.load_items(out)["model"])) == ["base", "fticl", "ft"]
    genft.api.write_report(out)
    report = (out / "report.md").read_text()
    assert report.index("| fticl |") < report.index("| ft |")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    lines = []
    run_experiment(write_config(tmp_path, TINY), tmp_path / "out", dry_run=True, echo=lines.append)
    text = "\n".join(lines)
    assert "training runs: 2" in text and "evaluation cells: 11 (0 already in the store" in text
    assert "tokens to process" in text
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_a_busy_directory_refuses(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out):
        with pytest.raises(GenftError, match="in use by another genft run"):
            run_experiment(write_config(tmp_path, TINY), out, backends=make_backends(),
                           progress=False, echo=lambda s: None)
    assert not (out / "results.db").exists()  # refused before touching anything


def test_cli_refuses_busy_directory_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = write_config(tmp_path, TINY)
    with OutputLock(out):  # another open file description: flock conflicts as across processes
        assert main(["run", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"genft: error: {out} is in use by another genft run (pid" in err


def _start(cfg: Path, out: Path, sleep: float, report: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "test_run_fakes.py"), str(cfg), str(out),
                             str(sleep), *(["report"] if report else [])],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])})


def _wait_for(pred, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        assert proc.poll() is None, "the run ended before the kill point"
        time.sleep(0.05)
    raise AssertionError("kill point never reached")


def _log(out: Path) -> str:
    p = out / "genft.log"
    return p.read_text() if p.is_file() else ""


@pytest.mark.parametrize("when", ["training", "evaluation"])
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, when):
    cfg = write_config(tmp_path, TINY)
    reference = tmp_path / "reference"
    run_experiment(cfg, reference, backends=make_backends(), progress=False,
                   echo=lambda s: None)

    out = tmp_path / "out"
    proc = _start(cfg, out, sleep=0.4)
    if when == "training":
        _wait_for(lambda: "training fticl" in _log(out), proc)
        time.sleep(0.3)
    else:
        _wait_for(lambda: _log(out).count("cell ") >= 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = table(out)
    assert 0 < len(partial) < len(table(reference))

    run_experiment(cfg, out, backends=make_backends(), progress=False,
                   echo=lambda s: None)
    assert table(out) == table(reference)
    assert item_rows(out) == item_rows(reference)
    store = Store(out / "results.db")
    assert [r["status"] for r in store.runs()] == ["killed", "finished"]


def test_genft_run_end_to_end(tmp_path):
    """The real trainer and evaluator on a tiny config, through the CLI."""
    pytest.importorskip("genft.training")
    cfg = write_config(tmp_path, {
        "name": "e2e", "train_tasks": ["tweet_sentiment"], "methods": {"ft": {}},
        "training": {"steps": 2, "batch_size": 2, "max_length": 96, "lr": 2e-4}, "train_sizes": [16],
        "test": ["tweet_sentiment", "bbc_headline"], "shots": {"sentiment": [0], "summarization": [0]},
        "limit": {"classification": 4, "generation": 2}})
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "genft.cli", "run", str(cfg), "--out", str(out),
                        "--no-progress", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    stored = table(out)
    assert len(stored) == 4  # (base, ft) × (tweets 0-shot, headlines 1-shot)
    assert sorted(n for *_, n in stored.values()) == [2, 2, 4, 4]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Format specialization" in html
    from genft.api import load_results

    df = load_results(out)
    assert set(df["model"]) == {"base", "ft"}
    assert df[df["primary"]]["value"].between(0, 1).all()
    assert (df["truncated"] == 0).all()  # the evaluator's info reaches the export
    for c in Store(out / "results.db").cells():  # every cell keeps the evaluator's provenance
        info = c["provenance"]["info"]
        assert info["data_hash"] == c["provenance"]["data_hash"] and "seed" in info
        assert c["provenance"]["config_hash"]


REAL = {
    "name": "killme", "train_tasks": ["tweet_sentiment"], "methods": {"ft": {}},
    "training": {"steps": 3, "batch_size": 2, "max_length": 96}, "train_sizes": [16],
    "test": ["tweet_sentiment", "bbc_topic", "bbc_headline"], "shots": [0],
    "limit": {"classification": 4, "generation": 2},
}


def _genft_run(cfg: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genft.cli", "run", str(cfg), "--out", str(out),
                             "--no-progress", "--no-report", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "evaluation"])
def test_sigkill_real_run_then_rerun_equals_uninterrupted_run(tmp_path, when):
    """The real trainer and evaluator, killed with SIGKILL mid-stage, then resumed."""
    cfg = write_config(tmp_path, REAL)
    reference = tmp_path / "reference"
    assert _genft_run(cfg, reference).wait(timeout=900) == 0
    out = tmp_path / "out"
    proc = _genft_run(cfg, out)
    if when == "training":  # the trainer has claimed its directory: training is under way
        _wait_for(lambda: any((out / "checkpoints").glob("*/genft_train.json")), proc, timeout=600)
        assert not any((out / "checkpoints").glob("*/final/genft_checkpoint.json"))
    else:
        _wait_for(lambda: "evaluating ft" in _log(out) and _log(out).count("cell ") >= 4, proc,
                  timeout=900)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(table(out)) < len(table(reference))
    assert _genft_run(cfg, out).wait(timeout=900) == 0
    assert table(out) == table(reference)  # same keys, same metric values, no duplicates
    assert item_rows(out) == item_rows(reference)


def test_cli_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    """An unwritable --out is refused before any work (no chmod: CI may run as root)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    calls = []
    with pytest.raises(GenftError, match=r"--out .*file/out: cannot write here \(Not a directory\)"):
        run_experiment(write_config(tmp_path, TINY), blocker / "out",
                       backends=make_backends(calls=calls), progress=False, echo=lambda s: None)
    assert calls == []
    assert main(["run", str(write_config(tmp_path, TINY)), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"genft: error: --out {blocker / 'out'}: cannot write")


LOCAL_TASK = """\
name: mytask
family: mysentiment
type: classification
source:
  kind: local
  path: data.jsonl
fields:
  input: text
label:
  column: label
  words: [negative, positive]
metrics: [accuracy]
prompt1: "### Input:\\n{{ input }}\\n### Sentiment:"
prompt2: "Text: {{ input }}\\nSentiment:"
max_new_tokens: 5
splits:
  test: {size: 4}
  fewshot: {size: 4}
  train: {size: 8}
"""


def _write_rows(folder: Path, rows: list[dict]) -> None:
    import json

    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_changed_data_file_recomputes_its_cells_and_jobs_and_keeps_the_old_ones(tmp_path):
    """Row 31: an edited data file never reuses a cell or a checkpoint computed on the old data."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mytask.yaml").write_text(LOCAL_TASK)
    rows = [{"text": f"text {i}", "label": ["negative", "positive"][i % 2]} for i in range(20)]
    _write_rows(tasks, rows)
    cfg = write_config(tmp_path, {
        "name": "changed", "include": ["tasks"], "train_tasks": ["mytask"], "methods": {"ft": {}},
        "training": {"steps": 2, "batch_size": 2}, "test": ["mytask", "bbc_headline"],
        "shots": [0], "limit": 2})
    out = tmp_path / "out"

    def run():  # a fresh process per run, as from the command line
        assert _start(cfg, out, 0.0).wait(timeout=120) == 0
        db = sqlite3.connect(out / "results.db")
        rows = db.execute("SELECT key, task, model_label, provenance, created FROM cells")
        return {r[0]: r[1:] for r in rows}

    first = run()
    assert len(first) == 4  # (base, ft) × (mytask, bbc_headline)
    rows[5]["text"] = "an edited row"
    _write_rows(tasks, rows)
    second = run()
    assert set(first) < set(second) and len(second) == 7
    new = {k: v for k, v in second.items() if k not in first}
    # the base model's cell on mytask, and every cell of the model trained on the new data
    assert sorted((task, model) for task, model, *_ in new.values()) == [
        ("bbc_headline", "ft"), ("mytask", "base"), ("mytask", "ft")]
    assert all(second[k] == v for k, v in first.items())  # old cells untouched
    store = Store(out / "results.db")
    assert len({c["job_key"] for c in store.checkpoints()}) == 2  # retrained on the new data
    import json

    old_hash = {json.loads(v[2])["data_hash"] for v in first.values() if v[0] == "mytask"}
    new_hash = {json.loads(v[2])["data_hash"] for v in new.values() if v[0] == "mytask"}
    assert len(old_hash) == len(new_hash) == 1 and old_hash != new_hash
    assert all(json.loads(v[2])["config_hash"] for v in second.values())
    # the export shows the latest plan's cells, with the data they read
    df = load_results(out)
    assert set(df["cell_key"]) == set(new) | {k for k, v in first.items()
                                              if (v[0], v[1]) == ("bbc_headline", "base")}
    assert set(df[df["test_task"] == "mytask"]["data_hash"]) == new_hash
    old_rows = load_results(out, all_cells=True)
    assert set(old_rows[old_rows["test_task"] == "mytask"]["data_hash"]) == old_hash | new_hash
