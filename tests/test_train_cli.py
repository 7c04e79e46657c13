"""`genft train` / `genft diff` from the command line: bad input is one line + exit 2;
the same command runs data-parallel under `accelerate launch` (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


from genft.cli import main
from genft.models import load_model

TINY_ARGS = ["--task", "tweet_sentiment", "--train-size", "8", "--batch-size", "4",
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_run(tmp_path, tiny_model):  # noqa: F811
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "genft.cli", "train", *TINY_ARGS,
           "--model", tiny_model, "--steps", "3", "--save-every", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = load_model(str(out / "final"))
    assert loaded.method == "ft"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # written once (main process), every step
    # each step's tokens come from both processes: 2 micro-batches of up to 4 items
    assert all(r["tokens"] > 0 for r in log)
    assert (out / "checkpoints" / "step-000003" / "genft_checkpoint.json").is_file()
