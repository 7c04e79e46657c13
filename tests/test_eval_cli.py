"""`genft eval` and the grid writer: outputs, resume, Ctrl-C safety, one-line errors,
and sharding under `accelerate launch`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from genft.cli import main
from genft.errors import GenftError
from genft.evaluation import grid
from genft.evaluation.grid import evaluate_grid, plan_cells


pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_writes_records_and_items_and_resumes(smol, tasks, tmp_path):
    cells = plan_cells([tasks.get("tweet_sentiment"), tasks.get("bbc_headline")], [0], ["prompt1"])
    results = evaluate_grid(smol, cells, tmp_path, limit=2, progress=False, log=lambda s: None)
    assert len(results) == 2
    table = pd.read_json(tmp_path / "results.jsonl", lines=True)
    assert list(table["task"]) == ["tweet_sentiment", "bbc_headline"]
    assert set(table.columns) >= {"family", "shots", "format", "metrics", "n", "seconds", "model", "info"}
    assert table.loc[0, "info"]["transformers"] and table.loc[0, "n"] == 2
    items = pd.read_json(tmp_path / table.loc[0, "items_file"], lines=True)
    assert list(items.columns) >= ["task", "shots", "format", "id", "prompt_hash", "prediction", "gold",
                                   "scores"]
    assert len(items) == 2 and set(items.loc[0, "scores"]) == {"negative", "positive"}
    again = evaluate_grid(smol, cells, tmp_path, limit=2, progress=False, log=lambda s: None)
    assert again == []  # both cells already recorded
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


def test_interrupt_keeps_finished_cells(smol, tasks, tmp_path, monkeypatch):
    cells = plan_cells([tasks.get("tweet_sentiment")], [0, 1], ["prompt1"])
    real = grid.evaluate_cell
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(grid, "evaluate_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_grid(smol, cells, tmp_path, limit=2, progress=False, log=lambda s: None)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["shots"] == 0
    assert [p.name for p in (tmp_path / "items").iterdir()] == [
        "tweet_sentiment.0shot.prompt1.first.loglik.jsonl"]


def test_full_disk_while_saving_a_cell_is_one_line_and_keeps_finished_cells(
        smol, tasks, tmp_path, monkeypatch):
    """errors.md row 27: the disk fills up half-way through the second cell's record line."""
    import errno

    cells = plan_cells([tasks.get("tweet_sentiment")], [0, 1], ["prompt1"])
    real_write, writes = os.write, []

    def filling_disk(fd, data):
        writes.append(data)
        if b'"shots": 1' in data:  # the second record: half of it lands, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(grid.os, "write", filling_disk)
    with pytest.raises(GenftError, match=r"disk full while saving cell tweet_sentiment 1-shot "
                                         r"prompt1 .*every cell already in results.jsonl is intact"):
        evaluate_grid(smol, cells, tmp_path, limit=2, progress=False, log=lambda s: None)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["shots"] == 0  # no half record left behind
    monkeypatch.setattr(grid.os, "write", real_write)
    again = evaluate_grid(smol, cells, tmp_path, limit=2, progress=False, log=lambda s: None)
    assert [r.shots for r in again] == [1]
    assert [json.loads(x)["shots"] for x in (tmp_path / "results.jsonl").read_text().splitlines()] \
        == [0, 1]


def test_cli_eval_end_to_end(tmp_path, capsys):
    rc = main(["eval", "--tasks", "tweet_sentiment", "--shots", "2", "--formats", "prompt2",
               "--limit", "3", "--scoring", "first-token", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    record = json.loads((tmp_path / "results.jsonl").read_text())
    assert (record["task"], record["shots"], record["format"], record["scoring"]) == \
        ("tweet_sentiment", 2, "prompt2", "first-token")
    assert 0 <= record["metrics"]["accuracy"] <= 1
    assert "tweet_sentiment 2-shot prompt2: accuracy=" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "tweet_sentimnt"], 'unknown task \'tweet_sentimnt\' (did you mean "tweet_sentiment"?)'),
    (["--tasks", "tweet_sentiment", "--shots", "33"], "only 32 few-shot examples"),
    (["--tasks", "tweet_sentiment", "--formats", "prompt3"], "--formats: unknown format"),
    (["--tasks", "tweet_sentiment", "--batch-size", "0"], "--batch-size must be"),
    (["--tasks", "tweet_sentiment", "--model", "./no/such/model"], "unknown model './no/such/model'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    rc = main(["eval", *argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("genft: error: ") and message in err[0]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_adapter_for_another_base_model_is_one_line(tmp_path, capsys):
    """A LoRA adapter trained on a narrower model, pointing at the default model as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4,
                                        vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "smollm2-135m"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    rc = main(["eval", "--model", str(tmp_path / "adapter"), "--tasks", "tweet_sentiment",
               "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "genft: error" in line]
    assert rc == 2 and len(errors) == 1 and "does not fit its base model" in errors[0]
    assert "Traceback" not in err  # (transformers' own weight-loading bar may precede the line)


@pytest.mark.slow
def test_accelerate_two_processes_gather_identical_results(tmp_path):
    """`accelerate launch --cpu --num_processes 2`: items are split, results gathered, same output."""
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    common = ["eval", "--tasks", "tweet_sentiment,bbc_headline", "--shots", "1", "--formats",
              "prompt1", "--limit", "5", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "genft.cli", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines",
                          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genft.cli",
                          *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    for cell in ("tweet_sentiment.1shot.prompt1.first.loglik.jsonl",
                 "bbc_headline.1shot.prompt1.first.greedy.jsonl"):
        a = [json.loads(x) for x in (tmp_path / "one" / "items" / cell).read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "two" / "items" / cell).read_text().splitlines()]
        assert [x["prediction"] for x in a] == [x["prediction"] for x in b] and len(a) == 5
        for x, y in zip(a, b):
            for label, score in x.get("scores", {}).items():
                assert abs(score - y["scores"][label]) < 1e-5
    recs = [json.loads(x) for x in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2  # written once, by the main process
    ones = [json.loads(x) for x in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in recs] == [r["metrics"] for r in ones]
