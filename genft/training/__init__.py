"""Training: FT, FTICL, LoRA, prompt tuning, ProMoT, multi-task and joint tuning in one loop.

    from genft.training import TrainConfig, train, param_change
    final = train(TrainConfig(tasks=["tweet_sentiment"], method="ft", steps=40, out="runs/ft"))
    stats = param_change("smollm2-135m", final)
"""

from genft.training.config import METHODS, TrainConfig
from genft.training.diff import param_change
from genft.training.loop import train

__all__ = ["METHODS", "TrainConfig", "train", "param_change"]
