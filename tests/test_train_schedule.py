"""The learning-rate schedule (transformers.get_scheduler) and the experiment trackers
(Accelerate's, report_to) of the training loop, on the tiny fixture model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_train_methods import TINY, run

from genft.errors import GenftError
from genft.experiments.plan import job_key
from genft.training import TrainConfig, loop

FAST = {**TINY, "steps": 4}


def old_factor(cfg: TrainConfig, step: int, steps: int) -> float:
    """The schedule genft computed by hand before it used transformers.get_scheduler."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "linear":
        return max(0.0, (steps - step) / max(1, steps - cfg.warmup_steps))
    return 1.0


def lrs(log, stage="train") -> list[float]:
    return log[log["stage"] == stage]["lr"].tolist()


def logged_lrs(out) -> list[float]:
    """The lrs of train_log.jsonl as written (pandas' JSON reader rounds the last digit)."""
    rows = [json.loads(line) for line in open(out / loop.LOG_FILE)]
    return [r["lr"] for r in rows if r["stage"] == "train"]


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_constant_and_linear_without_warmup_train_bitwise_as_before(tmp_path, tiny_model, monkeypatch,
                                                                    one_thread, schedule):
    """Same lr at every step as the hand-written schedule (exactly), hence the same weights:
    the reference run drives the optimizer by the old formula."""
    final, log = run(tmp_path, tiny_model, "new", **FAST, lr_schedule=schedule)
    cfg = TrainConfig(**FAST, lr_schedule=schedule, model=tiny_model, out="")
    assert logged_lrs(tmp_path / "new") == [TINY["lr"] * old_factor(cfg, s, 4) for s in range(4)]

    monkeypatch.setattr(loop, "_scheduler", lambda cfg, opt, steps: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: old_factor(cfg, step, steps)))
    reference, _ = run(tmp_path, tiny_model, "old", **FAST, lr_schedule=schedule)
    a, b = load_file(final / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_starts_at_zero_and_each_promot_stage_has_its_own_schedule(tmp_path, tiny_model,
                                                                          one_thread):
    _, log = run(tmp_path, tiny_model, "promot", method="promot", stage1_steps=4, steps=4,
                 prompt_length=4, dev_size=4, lr_schedule="linear", warmup_ratio=0.5)
    # warmup_ratio 0.5 of 4 steps = 2 warmup steps, from lr 0 (transformers' convention)
    assert lrs(log, "stage1") == pytest.approx([0.0, 0.05, 0.1, 0.05])  # stage1_lr 0.1
    assert lrs(log, "stage2") == pytest.approx([0.0, 5e-3, 1e-2, 5e-3])  # lr 1e-2


def test_cosine_follows_transformers_formula(tmp_path, tiny_model, one_thread):
    _, log = run(tmp_path, tiny_model, "cos", **FAST, lr_schedule="cosine", warmup_steps=1)
    expected = [0.0] + [1e-2 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 3)) for s in (1, 2, 3)]
    assert lrs(log) == pytest.approx(expected)


def test_new_fields_leave_existing_identities_and_job_keys_alone(tiny_model):
    plain = TrainConfig(**FAST, model=tiny_model, out="a")
    assert "warmup_ratio" not in plain.identity() and "report_to" not in plain.identity()
    tracked = TrainConfig(**FAST, model=tiny_model, out="b", report_to=["tensorboard"])
    assert job_key(tracked) == job_key(plain)  # trackers are not what a job computes
    assert TrainConfig(**FAST, model=tiny_model, out="c", report_to="none").report_to == []
    ratio = TrainConfig(**FAST, model=tiny_model, out="d", warmup_ratio=0.1)
    assert ratio.identity()["warmup_ratio"] == 0.1 and job_key(ratio) != job_key(plain)
    with pytest.raises(GenftError, match="give warmup_steps or warmup_ratio, not both"):
        TrainConfig(**FAST, model=tiny_model, out="e", warmup_steps=1, warmup_ratio=0.1)
    with pytest.raises(GenftError, match="report_to"):
        TrainConfig(**FAST, model=tiny_model, out="f", report_to=["tensorbored"])


def test_report_to_tensorboard_writes_the_loss_offline(tmp_path, tiny_model, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, log = run(tmp_path, tiny_model, "tb", method="promot", stage1_steps=2, steps=2,
                 prompt_length=4, dev_size=4, stage1_eval_every=1, report_to=["tensorboard"])
    events = list((tmp_path / "tb" / "trackers").rglob("events.out.tfevents.*"))
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    loss = log[log["stage"] == "stage2"]["loss"].tolist()
    assert [s for s, _ in scalars["stage2/loss"]] == [1, 2]
    assert [v for _, v in scalars["stage2/loss"]] == pytest.approx(loss, rel=1e-5)
    assert {"stage1/loss", "stage1/lr", "stage2/lr", "stage1/dev_loss"} <= set(scalars)
    assert (tmp_path / "tb" / "train_log.jsonl").is_file()  # the report's log stays


def test_a_tracker_that_is_not_installed_is_one_line_before_anything_is_written(tmp_path,
                                                                               tiny_model):
    from accelerate.tracking import get_available_trackers

    missing = next(t for t in ("wandb", "mlflow", "aim")
                   if t not in {str(x) for x in get_available_trackers()})
    with pytest.raises(GenftError, match=f"report_to: {missing} is not installed"):
        run(tmp_path, tiny_model, "x", **FAST, report_to=[missing])
    assert not (tmp_path / "x").exists()


def test_report_to_in_an_experiment_config_reaches_the_trainer_but_not_the_job_key():
    from genft.experiments.config import ExperimentConfig
    from genft.experiments.plan import build_plan

    grid = {"train_tasks": ["tweet_sentiment"], "methods": {"ft": {}, "lora": {"report_to": "none"}}}
    tracked = build_plan(ExperimentConfig.model_validate({**grid, "training": {"report_to": "tensorboard"}}))
    plain = build_plan(ExperimentConfig.model_validate(grid))
    assert [j.settings.get("report_to") for j in tracked.jobs] == [["tensorboard"], []]
    assert [j.key for j in tracked.jobs] == [j.key for j in plain.jobs]
