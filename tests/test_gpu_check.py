"""bench/gpu_check.py's smoke mode runs every step of the GPU check (on the CPU, a tiny model),
so the command a GPU session runs is known to work before a GPU is lent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def test_gpu_check_smoke_mode_runs_every_check(tmp_path, capsys, one_thread):
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "check.json"
    assert module.main(["--device", "cpu", "--tiny", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "ALL CHECKS PASSED" in out
    results = json.loads(report.read_text())
    assert results["eval_float32"]["tweet_sentiment"]["max_abs_delta_logprob"] <= 1e-4
    assert results["eval_float32"]["bbc_headline"]["agree"] == 1.0
    assert set(results["training"]) == {"ft", "lora", "promot"}
    assert results["eval_speed"]["genft_tokens_per_s"] > 0
    assert results["train_speed"]["plain_tokens_per_s"] > 0
