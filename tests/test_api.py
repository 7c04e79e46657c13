"""The notebook API: the same results as the CLI, one call each."""

from __future__ import annotations

import genft
from genft.experiments.runner import run_experiment
from test_run_fakes import make_backends

CONFIG = {"name": "api", "train_tasks": ["tweet_sentiment"], "methods": {"ft": {}},
          "training": {"steps": 2}, "test": ["tweet_sentiment", "bbc_headline"],
          "shots": {"sentiment": [0], "summarization": [1]}, "limit": 3}


def test_api_names_are_exported_lazily():
    assert set(genft.__all__) >= {"run", "train", "evaluate", "load_results", "write_report"}
    assert genft.run is genft.api.run and genft.load_results is genft.api.load_results


def test_dry_run_from_a_dict_and_results_as_a_dataframe(tmp_path, capsys):
    outcome = genft.run(CONFIG, out=tmp_path / "out", dry_run=True)
    assert len(outcome.plan.cells) == 4 and "evaluation cells: 4" in capsys.readouterr().out
    run_experiment(CONFIG, tmp_path / "out", backends=make_backends(), progress=False,
                   echo=lambda s: None)
    df = genft.load_results(tmp_path / "out")
    assert df[df["primary"]]["cell_key"].nunique() == 4
    assert genft.write_report(tmp_path / "out").name == "report.html"
