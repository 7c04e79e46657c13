"""Tasks as data: YAML specs, their sources, prompts and demonstrations."""

from genft.tasks.demos import make_sampler
from genft.tasks.labels import check_label_words
from genft.tasks.registry import TaskRegistry, registry
from genft.tasks.task import Task

__all__ = ["Task", "TaskRegistry", "registry", "make_sampler", "check_label_words"]
