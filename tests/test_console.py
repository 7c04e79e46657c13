"""What genft prints on the terminal: the overall progress bar (its ETA covers training), the
results table `genft run` ends with, --quiet / -v, and no library noise (loading bars,
FutureWarnings) leaking through."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import warnings

import pytest
from test_run import TINY, write_config
from test_run_fakes import make_backends

from genft import console
from genft.experiments import progress as progress_module
from genft.experiments.plan import token_estimates
from genft.experiments.runner import run_experiment


def test_the_run_bar_moves_with_every_training_step_and_cell_and_ends_full(tmp_path, monkeypatch):
    seen = []
    for method in ("training", "evaluated"):
        original = getattr(progress_module.RunProgress, method)

        def spy(self, *args, _original=original, _method=method):
            _original(self, *args)
            seen.append((_method, self.bar.n, self.bar.total))

        monkeypatch.setattr(progress_module.RunProgress, method, spy)
    outcome = run_experiment(write_config(tmp_path, TINY), tmp_path / "out",
                             backends=make_backends(), progress=True, echo=lambda s: None)
    cells, jobs = token_estimates(outcome.plan)
    total = sum(cells.values()) + progress_module.TRAIN_TOKEN_COST * sum(jobs.values())
    assert all(t == total for *_, t in seen)
    steps = TINY["training"]["steps"]
    # two jobs of 4 steps: the bar advances after each step, not only when a job ends
    assert [m for m, *_ in seen].count("training") == 2 * (steps + 1)  # + the end of each job
    positions = [n for _, n, _ in seen]
    assert positions == sorted(positions) and positions[-1] == pytest.approx(total)
    training_share = progress_module.TRAIN_TOKEN_COST * sum(jobs.values()) / total
    assert 0.2 < training_share < 1  # training is a real part of the ETA


def test_a_resumed_run_starts_the_bar_at_what_is_stored(tmp_path):
    cfg = write_config(tmp_path, TINY)
    run_experiment(cfg, tmp_path / "out", backends=make_backends(), progress=False,
                   echo=lambda s: None)
    outcome = run_experiment(cfg, tmp_path / "out", backends=make_backends(), progress=False,
                             echo=lambda s: None)
    bar = progress_module.RunProgress(outcome.plan, {c.key for c in outcome.plan.cells},
                                      {j.key for j in outcome.plan.jobs}, enabled=False)
    assert bar.bar.n == bar.bar.total


def test_results_table_has_a_row_per_model_and_test_set_and_a_column_per_shot_count(tmp_path):
    out = tmp_path / "out"
    run_experiment(write_config(tmp_path, TINY), out, backends=make_backends(), progress=False,
                   echo=lambda s: None)
    table = console.results_table(out)
    headers = [c.header for c in table.columns]
    assert headers == ["model", "trained on", "test set", "metric", "0-shot", "1-shot", "2-shot"]
    rows = list(zip(*(c._cells for c in table.columns)))
    # base, ft, fticl × tweets, headlines; intermediate checkpoints stay in the report
    assert sorted((r[0], r[2]) for r in rows) == sorted(
        (m, t) for m in ("base", "ft", "fticl") for t in ("tweet_sentiment", "bbc_headline"))
    tweets = next(r for r in rows if r[:3] == ("ft", "tweet_sentiment", "tweet_sentiment"))
    assert tweets[3] == "accuracy" and tweets[4] and tweets[6] and tweets[5] == ""  # 1-shot: headlines only


@pytest.fixture
def restore_logging():
    yield
    for logger, handler in console._HANDLERS:
        logger.removeHandler(handler)
    console._HANDLERS.clear()
    logging.getLogger("genft").propagate = True
    logging.getLogger("genft").setLevel(logging.NOTSET)
    logging.captureWarnings(False)


@pytest.mark.parametrize("flags, shown, hidden", [
    ([], ["genft: warning: w"], ["genft: i", "FutureWarning"]),
    (["-v"], ["genft: warning: w", "genft: i", "FutureWarning: f"], []),
    (["-q"], ["genft: error: e"], ["w", "genft: i", "FutureWarning"]),
])
def test_quiet_and_verbose_set_what_reaches_stderr(capsys, restore_logging, flags, shown, hidden):
    parser = argparse.ArgumentParser()
    console.add_options(parser)
    with warnings.catch_warnings():
        assert console.setup(parser.parse_args(flags)) == ("-q" not in flags)
        run_log = logging.getLogger("genft.run.somewhere")  # a run's file logger logs INFO
        run_log.setLevel(logging.INFO)
        run_log.info("i")
        run_log.warning("w")
        run_log.error("e")
        warnings.warn("f", FutureWarning)
    err = capsys.readouterr().err
    assert all(s in err for s in shown), err
    assert not any(s in err for s in hidden), err


NOISE = ["Loading weights", "Writing model shards", "FutureWarning", "UserWarning",
         "DeprecationWarning", "Traceback"]


def _genft_run(tmp_path, tiny_model, *flags):
    cfg = write_config(tmp_path, {
        "name": "quiet", "model": tiny_model, "train_tasks": ["tweet_sentiment"],
        "methods": {"ft": {}}, "training": {"steps": 2, "batch_size": 2, "max_length": 96},
        "train_sizes": [8], "test": ["tweet_sentiment"], "shots": [0], "limit": 2})
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "genft.cli", "run", str(cfg), "--out", str(out),
                        "--threads", "1", *flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, out


def test_genft_run_shows_its_bars_and_table_and_no_library_noise(tmp_path, tiny_model):
    r, out = _genft_run(tmp_path, tiny_model)
    assert not [s for s in NOISE if s in r.stderr], r.stderr[-3000:]
    assert "run: 100%" in r.stderr and "jobs 1/1, cells 2/2" in r.stderr  # the overall bar
    lines = r.stdout.splitlines()
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert lines[-2] == f"this run: 2 cells computed, 1 models trained; results in {out / 'results.db'}"
    assert any(line.split()[:3] == ["ft", "tweet_sentiment", "tweet_sentiment"] for line in lines)


def test_genft_run_quiet_prints_only_the_final_line(tmp_path, tiny_model):
    r, out = _genft_run(tmp_path, tiny_model, "--quiet")
    assert r.stderr == ""
    assert r.stdout == f"report: {out / 'report.html'}\n"


def test_train_quiet_prints_only_the_checkpoint(tmp_path, tiny_model):
    r = subprocess.run([sys.executable, "-m", "genft.cli", "train", "--model", tiny_model,
                        "--tasks", "tweet_sentiment", "--steps", "1", "--batch-size", "2",
                        "--max-length", "96", "--train-size", "4", "--out", str(tmp_path / "t"),
                        "-q"], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"{tmp_path / 't' / 'final'}\n"


def test_eval_quiet_prints_only_the_results_store(tmp_path, tiny_model):
    r = subprocess.run([sys.executable, "-m", "genft.cli", "eval", "--model", tiny_model,
                        "--tasks", "tweet_sentiment", "--shots", "0", "--formats", "prompt1",
                        "--limit", "2", "--out", str(tmp_path / "e"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"{tmp_path / 'e' / 'results.db'}\n"
