"""`genft train` / `genft diff` from the command line: bad input is one line + exit 2;
the same command runs data-parallel under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json

import pytest

from genft.cli import main
from genft.models import load_model

TINY_ARGS = ["--tasks", "tweet_sentiment", "--train-size", "8", "--batch-size", "4",
             "--max-length", "96", "--steps", "2", "--lr", "1e-2", "--no-progress"]


def fails_with(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("genft: error: ") and message in err, err


def test_unknown_method(capsys, tmp_path):
    fails_with(capsys, ["train", *TINY_ARGS, "--method", "promt", "--out", str(tmp_path / "o")],
               "unknown method 'promt' (did you mean \"promot\"?)")


def test_train_size_above_pool(capsys, tmp_path):
    fails_with(capsys, ["train", *TINY_ARGS, "--train-size", "99999999", "--out", str(tmp_path / "o")],
               "more than task 'tweet_sentiment''s training pool")
    assert not (tmp_path / "o").exists()  # nothing written for a refused run


def test_lora_targets_absent(capsys, tmp_path, tiny_model):  # noqa: F811
    fails_with(capsys, ["train", *TINY_ARGS, "--model", tiny_model, "--method", "lora",
                        "--lora-targets", "q_proj,query_key_value", "--out", str(tmp_path / "o")],
               "LoRA target module(s) ['query_key_value'] are not in the model")


def test_out_dir_holding_another_run_or_other_files(capsys, tmp_path, tiny_model):  # noqa: F811
    out = str(tmp_path / "o")
    assert main(["train", *TINY_ARGS, "--model", tiny_model, "--out", out]) == 0
    capsys.readouterr()
    fails_with(capsys, ["train", *TINY_ARGS, "--model", tiny_model, "--lr", "3e-3", "--out", out],
               "holds another run (it differs in lr)")
    fails_with(capsys, ["train", *TINY_ARGS, "--model", tiny_model, "--out", out],
               "already holds this finished run; pass --resume")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    fails_with(capsys, ["train", *TINY_ARGS, "--model", tiny_model, "--out", str(tmp_path / "other")],
               "is not empty and holds no genft run")
    # genft diff on the finished run: table and JSON
    assert main(["diff", tiny_model, f"{out}/final", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["overall"]["mean_abs_change"] > 0 and "q_proj" in stats["by_module"]
    assert main(["diff", tiny_model, f"{out}/final"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["module", "params"] and "overall" in table


def test_two_process_data_parallel_run(tmp_path, tiny_model):  # noqa: F811
    """`python -m torch.distributed.run --nproc_per_node 2` (gloo): both ranks train one DDP model,
    and 2 processes x grad_accum 1 train the same model as 1 process x grad_accum 2."""
    from test_distributed import rank_events, torchrun

    out, log = tmp_path / "ddp", tmp_path / "ranks.jsonl"
    args = [*TINY_ARGS, "--model", tiny_model, "--steps", "3", "--save-every", "3"]
    proc = torchrun(["train", *args, "--out", str(out)], log)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = [e for e in rank_events(log) if e["event"] == "train"]
    assert {(e["rank"], e["world_size"]) for e in train} == {(0, 2), (1, 2)}
    assert all(e["wrapper"] == "DistributedDataParallel" and e["processes"] == 2 for e in train)
    loaded = load_model(str(out / "final"))
    assert loaded.method == "ft"
    log_rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows] == [1, 2, 3]  # written once (rank 0), every step
    assert (out / "checkpoints" / "step-000003" / "genft_checkpoint.json").is_file()

    assert main(["train", *args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in log_rows], abs=1e-5)
    assert [r["tokens"] for r in one] == [r["tokens"] for r in log_rows]
