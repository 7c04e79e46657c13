"""The report and the tidy results table, built from a run with the fake backends."""

from __future__ import annotations

import re
import pandas as pd
import pytest
import yaml

from genft.cli import main
from genft.experiments.results import (export_results, label_answer_rate, load_results,
                                      normalized_score)
from genft.api import run
from test_run_fakes import make_backends

CONFIG = {
    "name": "rep", "train_tasks": ["tweet_sentiment"],
    "methods": {"ft": {}, "promot": {}},
    "training": {"steps": 4}, "train_sizes": [50, 100],
    "test": ["tweet_sentiment", "bbc_topic", "bbc_headline"],
    "shots": {"sentiment": [0, 2], "topic": [0], "summarization": [0, 1]},
    "formats": ["prompt1", "prompt2"], "limit": 8, "checkpoints": {"every": 2},
}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    run(d / "c.yaml", d / "out", backends=make_backends(), progress=False, echo=lambda s: None)
    return d / "out"


def test_label_answer_rate_and_normalization_definitions():
    assert label_answer_rate(["Positive.", " negative", "a headline", ""], ["negative", "positive"]) == 0.5
    assert normalized_score(0.5, "accuracy", {"type": "classification", "labels": ["a", "b"]}) == 0
    assert normalized_score(0.6, "accuracy", {"type": "classification", "labels": list("abcde")}) == pytest.approx(50)
    assert normalized_score(0.3, "rouge_l", {"type": "generation"}) == pytest.approx(30)
    assert normalized_score(0.5, "accuracy", {"type": "classification", "labels": ["a", "b"]},
                            "raw") == pytest.approx(50)


def test_tidy_table_has_one_row_per_cell_and_metric(out):
    df = load_results(out)
    assert not df.duplicated(["cell_key", "metric"]).any()
    prim = df[df["primary"]]
    assert prim["cell_key"].is_unique
    assert set(df["model"]) == {"base", "ft", "promot"}
    assert set(df[df["model"] == "ft"]["relation"]) == {"in-domain", "cross-task"}
    assert df[df["model"] == "base"]["relation"].isna().all()
    # the fake FT model answers every headline with a label word at its final step (4)
    spec = df[(df["metric"] == "label_answer_rate") & (df["model"] == "ft") & df["step"].isna()]
    assert (spec["value"] == 1.0).all() and len(spec) == 2 * 2 * 2  # sizes × shots × formats
    assert (df[(df["metric"] == "label_answer_rate") & (df["model"] == "base")]["value"] == 0).all()
    acc = prim[prim["test_task"] == "tweet_sentiment"]
    assert ((acc["value"] - 0.5) / 0.5 * 100 - acc["normalized"]).abs().max() < 1e-9


def test_report_is_self_contained_and_has_every_section(out):
    html = (out / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:|file:|report_files)', html)
    assert html.count("data:image/png;base64,") >= 4  # heatmaps, k-shot, sizes, over training
    for section in ["summary", "Heatmaps", "k-shot curves", "Training-size curves",
                    "Format specialization", "Specialization over training",
                    "Normalized average over held-out tasks", "Parameter change", "Run metadata",
                    "(score − chance) / (perfect − chance)"]:
        assert section in html, section
    md = (out / "report.md").read_text()
    for name in re.findall(r"\]\((report_files/[^)]+)\)", md):
        assert (out / name).is_file()
    # the specialization table shows the fake FT collapse next to the base model's zero
    spec = md.split("## Format specialization")[1].split("##")[0]
    assert "| tweet_sentiment | ft | bbc_headline | cross-task | 1.000 |" in spec
    assert "| tweet_sentiment | base | bbc_headline | cross-task | 0.000 |" in spec


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_results_export_is_a_table_pandas_reads(out, tmp_path, fmt):
    dest = export_results(out, tmp_path / f"r.{fmt}")  # the file type is the suffix
    df = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](dest)
    assert len(df) == len(load_results(out))
    assert {"model", "test_task", "shots", "format", "metric", "value", "normalized"} <= set(df.columns)


def test_genft_results_cli(out, tmp_path, capsys):
    assert main(["results", str(out), "-o", str(tmp_path / "r.csv")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == len(load_results(out))
    # --to names the file type whatever the suffix; an unknown suffix alone is one line
    assert main(["results", str(out), "-o", str(tmp_path / "r.txt"), "--to", "json"]) == 0
    assert len(pd.read_json(tmp_path / "r.txt")) == len(load_results(out))
    capsys.readouterr()
    assert main(["results", str(out), "-o", str(tmp_path / "r.tsv")]) == 2
    assert "give --to csv|json|parquet" in capsys.readouterr().err


@pytest.mark.parametrize("to", [None, "json"])
def test_results_dash_o_dash_writes_the_table_to_stdout(out, tmp_path, capsys, monkeypatch, to):
    import io

    monkeypatch.chdir(tmp_path)
    assert main(["results", str(out), "-o", "-", *(["--to", to] if to else [])]) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "-").exists()
    df = pd.read_json(io.StringIO(text)) if to == "json" else pd.read_csv(io.StringIO(text))
    assert len(df) == len(load_results(out)) and "metric" in df.columns


def test_results_dash_o_dash_parquet_is_binary_on_stdout(out, tmp_path):
    import io
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "genft.cli", "results", str(out), "-o", "-",
                           "--to", "parquet"], capture_output=True, cwd=tmp_path, env=env,
                          check=True)
    assert len(pd.read_parquet(io.BytesIO(done.stdout))) == len(load_results(out))
    assert not (tmp_path / "-").exists()


def test_results_to_a_reader_that_stopped_reading_is_quiet(out):
    """`genft results DIR -o - | head -1`: no BrokenPipeError traceback, the shell's 141."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "genft.cli", "results", str(out), "-o", "-"],
                          stdout=write, stderr=subprocess.PIPE, env=env)
    os.close(write)
    assert done.returncode == 141 and done.stderr == b""


def test_genft_report_on_a_directory_without_results_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genft: error:") and "no results.db" in err and err.count("\n") == 1


# ---------------------------------------------------------------- empty and partial stores


def test_genft_report_with_zero_cells_is_one_line(tmp_path, capsys):
    """A run that has started and stored nothing yet: one line, no traceback, no report."""
    from genft.experiments.store import Store

    Store(tmp_path / "results.db").start_run(CONFIG, {}, ["k1", "k2"])
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path}: no finished cells yet\n"
    assert not (tmp_path / "report.html").exists()


def test_genft_report_with_only_empty_cells_is_one_line(tmp_path, capsys):
    """Cells with no items (what `limit: 0` stored) have no score: the report skips them."""
    backends = make_backends()
    real_eval = backends.evaluate_cell

    def empty(*args, **kwargs):
        r = real_eval(*args, **kwargs)
        return type(r)(dict.fromkeys(r.metrics, 0.0), 0, r.seconds, [])

    backends.evaluate_cell = empty
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**CONFIG, "train_sizes": [50]}))
    outcome = run(tmp_path / "c.yaml", tmp_path / "out", backends=backends, progress=False,
                  echo=lambda s: None)
    assert outcome.computed > 0 and outcome.report is None
    assert main(["report", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().endswith("no finished cells yet")


def test_report_while_the_run_is_going_is_partial(tmp_path):
    """Built from inside a run (after the base model's cells, before any training has
    finished): a partial report that says so, without a traceback."""
    from genft.report import build_report

    backends = make_backends()
    real_train, seen = backends.train, {}

    def train(cfg, **kwargs):
        if not seen:
            seen["html"] = build_report(tmp_path / "out").read_text()
        return real_train(cfg, **kwargs)

    backends.train = train
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**CONFIG, "train_sizes": [50]}))
    run(tmp_path / "c.yaml", tmp_path / "out", backends=backends, progress=False,
        echo=lambda s: None)
    html = seen["html"]
    assert "Partial report: run 1 is still going" in html
    assert "No trained model has finished cells yet" in html and "Run metadata" in html
    assert "Partial report" not in (tmp_path / "out" / "report.html").read_text()


# ---------------------------------------------------------------- what the page shows


def test_heatmaps_share_one_scale_per_metric_and_centre_differences_on_zero(out):
    from genft.report import data as D, figures as F

    (_, scores), (_, diffs) = F.heatmaps(D.collect(out))
    for fig, signed in ((scores, False), (diffs, True)):
        panels = [ax for ax in fig.axes if ax.images]
        assert len(fig.axes) - len(panels) == 2  # one colour bar per metric (accuracy, rouge_l)
        by_metric: dict[str, set] = {}
        for ax in panels:
            norm = ax.images[0].norm
            by_metric.setdefault(ax.get_title().split(": ")[1], set()).add((norm.vmin, norm.vmax))
        assert all(len(scales) == 1 for scales in by_metric.values()), by_metric
        for (lo, hi), in by_metric.values():
            assert (lo == -hi) if signed else lo == 0


def test_examples_put_each_method_beside_the_base_answer(out):
    from genft.report import data as D

    ex = D.examples(D.collect(out), "tweet_sentiment")
    heads = ex["bbc_headline (0-shot, prompt1)"]
    assert list(heads.columns) == ["item", "gold", "base", "ft", "promot"] and len(heads) == 3
    assert (heads["ft"] == "negative").all() and heads["base"].str.startswith("headline").all()
    assert "bbc_topic (0-shot, prompt1)" in ex and "tweet_sentiment (0-shot, prompt1)" not in ex


def test_training_section_has_loss_curves_and_hyperparameters(out):
    from genft.report import data as D

    data = D.collect(out)
    logs = D.train_logs(data)
    assert len(logs) == 4  # 2 methods × 2 sizes, each from its own train_log.jsonl
    assert all(list(log["loss"]) == [2.0, 1.0, 2 / 3, 0.5] for log in logs.values())
    jobs = D.jobs(data)
    assert len(jobs) == 4 and (jobs["steps"] == 4).all() and set(jobs["size"]) == {50, 100}
    html = (out / "report.html").read_text()
    assert "hyperparameters per job" in html and 'alt="training loss per step"' in html
    # the parameter-change tables are reference material: collapsed
    pc = html.split('id="parameter-change-from-the-base-model"')[1].split("</section>")[0]
    assert "<details>" in pc and "q_proj" in pc.split("<details>")[1]


def test_a_train_log_outside_the_run_folder_is_not_read(out, tmp_path):
    from genft.report import data as D

    data = D.collect(out)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train_log.jsonl").write_text('{"step": 1, "loss": 9}\n')
    for c in data.checkpoints:
        c["path"] = str(tmp_path / "job" / "final")
    assert D.train_logs(data) == {}


def test_standard_errors_become_bars_and_a_lone_k_a_point_with_its_interval(out, monkeypatch):
    from genft.report import data as D, figures as F

    monkeypatch.setattr(D, "load_results", lambda o: load_results(o).assign(se=0.05))
    fig = F.kshot_curves(D.collect(out), "tweet_sentiment")
    topic = next(ax for ax in fig.axes if ax.get_title().startswith("bbc_topic"))
    assert topic.get_xlim() == (-1, 1)  # only k = 0: centred, not squeezed against an edge
    bars = [c for c in topic.containers if c.has_yerr]
    assert bars and all(len(c.lines[2][0].get_segments()) == 1 for c in bars)
    half = bars[0].lines[2][0].get_segments()[0][:, 1]
    assert abs((half[1] - half[0]) / 2 - 1.96 * 0.05) < 1e-9
    # no standard errors stored (the default here): no bars at all
    monkeypatch.undo()
    plain = F.kshot_curves(D.collect(out), "tweet_sentiment")
    assert not any(c.has_yerr for ax in plain.axes for c in ax.containers)


def test_the_answer_uses_the_paired_comparison_on_the_same_items(out, monkeypatch):
    import sys
    import types

    from genft.report import data as D

    calls = []

    def paired_bootstrap(a, b, *, seed=0, n_boot=1000):
        calls.append((list(a), list(b)))
        return sum(a) / len(a) - sum(b) / len(b), 0.01, 0.04

    monkeypatch.setitem(sys.modules, "genft.stats",
                        types.SimpleNamespace(paired_bootstrap=paired_bootstrap))
    table = D.answer(D.collect(out))
    ft = table[table["model"] == "ft"].iloc[0]
    assert "(paired Δ" in ft["cross-task"] and "p = 0.04" in ft["cross-task"]
    a, b = calls[0]
    assert len(a) == len(b) and len(a) % 8 == 0  # whole cells of 8 items, paired item by item
    assert all(0 <= x <= 1 for x in a + b)


def test_three_training_seeds_show_their_spread_in_tables_and_curves(tmp_path):
    """A grid over seeds: the report lists every seed's score with mean, sd, min and max, and
    the k-shot curves mark each seed's own value (the mean alone hides how much seeds differ)."""
    import dataclasses
    import json
    from pathlib import Path

    import numpy as np

    from genft.report import data as D, figures as F

    backends = make_backends()
    fake_train = backends.train

    def train(cfg, **kw):  # the fake's scores then differ per seed
        final = fake_train(cfg, **kw)
        meta = json.loads((Path(final) / "meta.json").read_text())
        (Path(final) / "meta.json").write_text(json.dumps({**meta, "seed": cfg["seed"]}))
        return final

    backends = dataclasses.replace(backends, train=train)
    config = {"name": "seeds", "train_tasks": ["tweet_sentiment"], "methods": {"ft": {}},
              "training": {"steps": 2}, "seeds": [0, 1, 2],
              "test": ["tweet_sentiment", "bbc_headline"],
              "shots": {"sentiment": [0, 2], "summarization": [1]}, "limit": 4}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run(tmp_path / "c.yaml", tmp_path / "out", backends=backends,
        progress=False, echo=lambda s: None)
    data = D.collect(tmp_path / "out")
    spread = D.seed_spread(data)
    ft = spread[(spread["model"] == "ft") & (spread["test set"] == "tweet_sentiment")
                & (spread["measure"] == "score")].iloc[0]
    prim = data.final("tweet_sentiment")
    per_seed = (prim[(prim["model"] == "ft") & (prim["test_task"] == "tweet_sentiment")]
                .groupby("train_seed")["value"].mean())
    assert ft["seeds"] == 3 and len(set(per_seed.round(6))) == 3
    assert ft["sd"] == pytest.approx(np.std(per_seed.to_numpy(), ddof=1))
    assert (ft["min"], ft["max"], ft["mean"]) == pytest.approx(
        (per_seed.min(), per_seed.max(), per_seed.mean()))
    assert ft["per seed"] == ", ".join(f"{s}: {v:.3f}" for s, v in per_seed.items())
    # the fake FT answers every headline with a label word: its rates are spread rows too
    rates = spread[(spread["model"] == "ft") & (spread["test set"] == "bbc_headline")]
    assert set(rates["measure"]) == {"score", "label answers", "empty answers"}
    assert spread[spread["model"] == "base"]["seeds"].eq(0).all()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Spread over training seeds" in md and ft["per seed"] in md
    fig = F.kshot_curves(data, "tweet_sentiment")
    tweets = next(ax for ax in fig.axes if ax.get_title().startswith("tweet_sentiment"))
    marks = [ln for ln in tweets.get_lines() if ln.get_marker() == "x"]
    assert len(marks) == 1 and sorted(marks[0].get_ydata()) == pytest.approx(
        sorted(D.kshot_seeds(data, "tweet_sentiment").query(
            "test_task == 'tweet_sentiment' and model == 'ft'")["value"]))
    assert len(marks[0].get_xdata()) == 3 * 2  # 3 seeds at k = 0 and k = 2


def test_one_seed_has_no_spread_section(out):
    from genft.report import data as D

    assert D.seed_spread(D.collect(out)).empty
    assert "Spread over training seeds" not in (out / "report.html").read_text()
