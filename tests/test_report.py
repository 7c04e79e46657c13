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
    dest = export_results(out, fmt, tmp_path / f"r.{fmt}")
    df = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](dest)
    assert len(df) == len(load_results(out))
    assert {"model", "test_task", "shots", "format", "metric", "value", "normalized"} <= set(df.columns)


def test_genft_results_cli(out, tmp_path, capsys):
    assert main(["results", str(out), "--format", "csv", "-o", str(tmp_path / "r.csv")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == len(load_results(out))


def test_genft_report_on_a_directory_without_results_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genft: error:") and "no results.db" in err and err.count("\n") == 1
