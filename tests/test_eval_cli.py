"""`genft eval` and the grid writer: outputs, resume, Ctrl-C safety, one-line errors,
and sharding under a real two-process launch (torchrun)."""

from __future__ import annotations

import json
import os

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


def eval_results(out) -> dict:
    """(task, shots, format) -> (metrics, [(prediction, scores)]) as `genft eval` stored them.
    The one place the two-process test reads eval output (switch it when the store changes)."""
    results = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        items = [json.loads(x) for x in (out / rec["items_file"]).read_text().splitlines()]
        key = (rec["task"], rec["shots"], rec["format"])
        assert key not in results, f"{key} written twice"
        results[key] = (rec["metrics"], [(x["prediction"], x.get("scores") or {}) for x in items])
    return results


def test_two_processes_shard_and_gather_identical_results(tmp_path, tiny_model):
    """`torch.distributed.run --nproc_per_node 2 -m genft.cli eval`: both ranks score a share of
    the items, rank 0 writes each cell once, and the results equal a one-process run."""
    from test_distributed import rank_events, torchrun

    common = ["eval", "--model", tiny_model, "--tasks", "tweet_sentiment,bbc_headline",
              "--shots", "0,1", "--formats", "prompt1", "--limit", "5", "--batch-size", "2",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    log = tmp_path / "ranks.jsonl"
    two = torchrun([*common, "--out", str(tmp_path / "two")], log)
    assert two.returncode == 0, two.stderr[-3000:]
    evals = [e for e in rank_events(log) if e["event"] == "eval"]
    assert {(e["rank"], e["world_size"]) for e in evals} == {(0, 2), (1, 2)}
    share = {r: sum(e["batches"] for e in evals if e["rank"] == r) for r in (0, 1)}
    assert share[0] > 0 and share[1] > 0
    assert share[0] + share[1] == sum(e["of"] for e in evals if e["rank"] == 0)  # split, not doubled
    one, both = eval_results(tmp_path / "one"), eval_results(tmp_path / "two")
    assert set(one) == set(both) and len(one) == 4
    for key in one:
        (m1, items1), (m2, items2) = one[key], both[key]
        assert m1 == pytest.approx(m2, abs=1e-5)
        assert [p for p, _ in items1] == [p for p, _ in items2] and len(items1) == 5
        for (_, s1), (_, s2) in zip(items1, items2):
            assert s1.keys() == s2.keys() and all(abs(s1[k] - s2[k]) < 1e-5 for k in s1)


