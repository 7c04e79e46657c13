"""Training: FT, FTICL, LoRA, prompt tuning, ProMoT, multi-task and joint tuning in one loop.

    from genft.training import TrainConfig, train, param_change
    final = train(TrainConfig(tasks=["tweet_sentiment"], method="ft", steps=40, out="runs/ft"))
    stats = param_change("smollm2-135m", final)

Methods are defined in ``genft.training.method_registry`` (``register_method``).

Every public name is imported lazily: ``train`` and ``param_change`` so that the CLI's
start-up (``genft --help``, ``genft tasks``) does not pay for importing torch, and
``TrainConfig`` so that genft/models.py can import ``genft.training.checkpoint`` (the
checkpoint format) without importing the config, which imports genft.models.
"""

__all__ = ["TrainConfig", "train", "param_change"]


def __getattr__(name: str):
    if name == "TrainConfig":
        from genft.training.config import TrainConfig

        return TrainConfig
    if name == "train":
        from genft.training.loop import train

        return train
    if name == "param_change":
        from genft.training.diff import param_change

        return param_change
    raise AttributeError(f"module 'genft.training' has no attribute {name!r}")
