"""Real multi-process runs: `genft run` under `python -m torch.distributed.run --nproc_per_node 2`
(gloo on CPU). Every process appends its rank to $GENFT_RANK_LOG (genft/distributed.py), so
the test proves two ranks trained (DDP) and evaluated (sharded), and that rank 0 alone stored
results equal to a one-process run of the same grid."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from genft import distributed
from genft.experiments.runner import run_experiment
from genft.experiments.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_grid(model: str) -> dict:
    """One FT job (grad_accum 2: one micro-batch per process under 2 processes) and 4 cells."""
    return {"name": "tiny2", "model": model, "train_tasks": ["tweet_sentiment"],
            "methods": {"ft": {}},
            "training": {"steps": 2, "batch_size": 2, "grad_accum": 2, "max_length": 96, "lr": 1e-2},
            "train_sizes": [8], "test": ["tweet_sentiment"], "shots": {"sentiment": [0, 1]},
            "limit": 5, "eval_batch_size": 2}


def stored(out) -> dict:
    """cell key -> (model label, metrics, [(prediction, scores)]): what a run stored."""
    store = Store.open_existing(out)
    try:
        return {c["key"]: (c["model_label"], c["metrics"],
                           [(i["prediction"], i["scores"]) for i in store.items(c["key"])])
                for c in store.cells()}
    finally:
        store.close()


def assert_same_results(a: dict, b: dict, tol: float = 1e-4) -> None:
    assert set(a) == set(b) and a
    for key in a:
        (label_a, metrics_a, items_a), (label_b, metrics_b, items_b) = a[key], b[key]
        assert label_a == label_b
        assert metrics_a == pytest.approx(metrics_b, abs=tol)
        assert [p for p, _ in items_a] == [p for p, _ in items_b]
        for (_, sa), (_, sb) in zip(items_a, items_b):
            assert sa.keys() == sb.keys() and all(abs(sa[k] - sb[k]) < tol for k in sa)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], rank_log, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node 2 -m genft.cli ARGS`, one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "genft.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.RANK_LOG_ENV: str(rank_log)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def rank_events(rank_log) -> list[dict]:
    return [json.loads(line) for line in rank_log.read_text().splitlines()]


def test_one_process_is_the_identity():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast(3) == 3 and distributed.main_decides(lambda: 4) == 4


def test_two_process_run_equals_one_process(tmp_path, tiny_model):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(tiny_grid(tiny_model)))
    run_experiment(cfg, tmp_path / "one", progress=False, report=False, echo=lambda s: None)

    log = tmp_path / "ranks.jsonl"
    proc = torchrun(["run", str(cfg), "--out", str(tmp_path / "two"), "--no-progress",
                     "--threads", "1"], log)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = rank_events(log)
    assert {(e["rank"], e["world_size"]) for e in events if e["event"] == "init"} == {(0, 2), (1, 2)}
    assert len({e["pid"] for e in events}) == 2
    train = [e for e in events if e["event"] == "train"]
    assert {e["rank"] for e in train} == {0, 1}
    assert all(e["wrapper"] == "DistributedDataParallel" and e["processes"] == 2 for e in train)
    evals = [e for e in events if e["event"] == "eval"]
    share = {r: sum(e["batches"] for e in evals if e["rank"] == r) for r in (0, 1)}
    total = sum(e["of"] for e in evals if e["rank"] == 0)
    assert share[0] > 0 and share[1] > 0 and share[0] + share[1] == total  # items were sharded

    assert_same_results(stored(tmp_path / "one"), stored(tmp_path / "two"))
    assert (tmp_path / "two" / "report.html").is_file()  # rank 0 wrote it
    runs = Store.open_existing(tmp_path / "two").runs()
    assert [r["status"] for r in runs] == ["finished"]  # one run record: rank 0 alone writes

    again = torchrun(["run", str(cfg), "--out", str(tmp_path / "two"), "--no-progress",
                      "--no-report", "--threads", "1"], tmp_path / "again.jsonl")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [e for e in rank_events(tmp_path / "again.jsonl") if e["event"] in ("train", "eval")]


def test_srun_variables_start_a_process_group(tmp_path):
    """Two processes started as srun starts them (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID,
    no RANK): genft.distributed maps them and gathers across both (gloo)."""
    code = ("from genft import distributed as d; "
            "print(d.gather_objects(d.rank()), d.main_decides(lambda: 'from-0'), flush=True)")
    port = str(free_port())
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**env, "SLURM_PROCID": str(r), "SLURM_NTASKS": "2",
                                   "SLURM_LOCALID": str(r), "SLURM_NNODES": "1",
                                   "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
                                   distributed.RANK_LOG_ENV: str(tmp_path / "ranks.jsonl")})
             for r in (0, 1)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["[0, 1] from-0", "[0, 1] from-0"]
    inits = [e for e in rank_events(tmp_path / "ranks.jsonl") if e["event"] == "init"]
    assert sorted((e["rank"], e["world_size"], e["backend"]) for e in inits) == [
        (0, 2, "gloo"), (1, 2, "gloo")]
