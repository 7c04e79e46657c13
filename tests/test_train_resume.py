"""--resume: an interrupted run continues from its last checkpoint and ends bitwise where an
uninterrupted run with the same seed ends (CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_train_methods import TINY, run

from genft.models import load_model
from genft.training import TrainConfig, train
from genft.training.loop import _Run


def interrupted_then_resumed(tmp_path, model, monkeypatch, crash_at, crash_stage, **kw):
    original = _Run._log

    def crash(self, stage, step, *args):
        original(self, stage, step, *args)
        if stage.name == crash_stage and step == crash_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "_log", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model, "interrupted", **kw)
    monkeypatch.undo()
    cfg = TrainConfig(**{**TINY, **kw}, model=model, out=str(tmp_path / "interrupted"))
    return train(cfg, progress=False, resume=True)


def test_resumed_ft_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    kw = dict(method="ft", steps=6, save_every=2, lr_schedule="linear", warmup_steps=2)
    straight, _ = run(tmp_path, tiny_model, "straight", **kw)
    resumed = interrupted_then_resumed(tmp_path, tiny_model, monkeypatch, 5, "train", **kw)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "interrupted" / "checkpoints" / "step-000004" / "genft_checkpoint.json").is_file()
    # a finished run is reused by --resume, refused without it
    cfg = TrainConfig(**{**TINY, **kw}, model=tiny_model, out=str(tmp_path / "straight"))
    assert train(cfg, progress=False, resume=True) == straight


def test_resumed_promot_skips_stage1_and_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    kw = dict(method="promot", steps=4, save_every=2, stage1_steps=3, prompt_length=4, dev_size=4)
    straight, _ = run(tmp_path, tiny_model, "straight", **kw)
    resumed = interrupted_then_resumed(tmp_path, tiny_model, monkeypatch, 3, "stage2", **kw)
    a, b = load_model(str(straight)), load_model(str(resumed))
    assert torch.equal(a.soft_prompts["tweet_sentiment"], b.soft_prompts["tweet_sentiment"])
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)


@pytest.mark.parametrize("kw, crash_at, crash_stage", [
    (dict(method="ft", steps=5), 3, "train"),  # no intermediate checkpoint: starts over
    (dict(method="promot", steps=4, save_every=2, stage1_steps=3, prompt_length=4, dev_size=4),
     3, "stage2"),  # resumes stage 2 at step 2; stage 1 (and its dev rows) finished before
])
def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_model, monkeypatch, kw, crash_at,
                                            crash_stage):
    """The log of a killed attempt is not left beside the redone steps: each (stage, step)
    appears once, with the values of the run that produced the final weights."""
    import pandas as pd

    from genft.training.loop import LOG_FILE

    _, straight = run(tmp_path, tiny_model, "straight", **kw)
    interrupted_then_resumed(tmp_path, tiny_model, monkeypatch, crash_at, crash_stage, **kw)
    log = pd.read_json(tmp_path / "interrupted" / LOG_FILE, lines=True)
    assert not log.duplicated(["stage", "step"]).any()
    assert log[["stage", "step"]].values.tolist() == straight[["stage", "step"]].values.tolist()
    assert log["loss"].dropna().tolist() == straight["loss"].dropna().tolist()
