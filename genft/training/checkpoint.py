"""The genft checkpoint: its on-disk format and a training run's layout, in one place.

The trainer (genft/training/loop.py) writes with this module; genft/models.py and
the experiment runner read with it.

A training run's output directory::

    OUT/final/                    the final checkpoint            final_dir(OUT)
    OUT/<stage>/                  an earlier stage's checkpoint   stage_dir(OUT, "stage1")
                                  (ProMoT: the best soft prompt on dev)
    OUT/checkpoints/step-000050/  intermediate checkpoints of     step_dir(OUT, 50)
                                  the last stage (save_every)
    OUT/training_state.pt         optimizer + RNG + step of the newest intermediate checkpoint

A checkpoint directory holds ``genft_checkpoint.json``, which says how to rebuild
the model::

    {"format": 1, "base_model": "smollm2-135m", "method": "promot",
     "tasks": ["tweet_sentiment"], "stage": "stage2", "step": null, "train_config": {...},
     "weights": "full" | "lora" | "base",
     "soft_prompts": {"tweet_sentiment": "soft_prompts/tweet_sentiment.safetensors"}}

``weights: full`` means the directory holds a full ``save_pretrained`` model;
``lora`` a PEFT adapter in ``adapter/``; ``base`` no weights (the model was frozen:
prompt tuning, ProMoT's stage 1). Soft prompts are ``[n_virtual_tokens, hidden]``
tensors stored under the key ``prompt``; evaluation prepends them only for the tasks
they were trained on.

A checkpoint is assembled in a temporary sibling directory and renamed into place,
so a crash never leaves half a checkpoint under the final name. The loop state
lives apart from the weights: tensors and plain values only, loaded with
``weights_only=True``. The data order needs no state: it is a pure function of the
seed and the step.

torch and safetensors are imported where they are used: genft/models.py imports
this module, and ``genft --help`` must not pay for torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

CHECKPOINT_FILE = "genft_checkpoint.json"
STATE_FILE = "training_state.pt"
FORMAT = 1
WEIGHT_KINDS = ("full", "lora", "base")
ADAPTER_DIR = "adapter"
SOFT_PROMPT_DIR = "soft_prompts"
PROMPT_KEY = "prompt"  # the tensor's name inside a soft-prompt file


def final_dir(out: Path) -> Path:
    return Path(out) / "final"


def stage_dir(out: Path, stage: str) -> Path:
    return Path(out) / stage


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step:06d}"


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / CHECKPOINT_FILE).is_file()


def weights_kind(stage_model: str) -> str:
    """What a checkpoint of a stage stores, from what the stage trained (full | lora | frozen)."""
    return {"full": "full", "lora": "lora", "frozen": "base"}[stage_model]


def write_checkpoint(path: Path, *, lm_state: dict, lm, tokenizer, prompt_tensors: list | None,
                     weights: str, meta: dict) -> Path:
    """Write one genft checkpoint; ``weights`` is full | lora | base."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    if weights == "full":
        lm.save_pretrained(tmp, state_dict=lm_state)
        tokenizer.save_pretrained(tmp)
    elif weights == "lora":
        lm.save_pretrained(tmp / ADAPTER_DIR, state_dict=lm_state)
    soft = {}
    for task, tensor in zip(meta["tasks"], prompt_tensors or []):
        rel = f"{SOFT_PROMPT_DIR}/{task}.safetensors"
        (tmp / SOFT_PROMPT_DIR).mkdir(exist_ok=True)
        save_file({PROMPT_KEY: tensor.detach().float().cpu().contiguous()}, tmp / rel)
        soft[task] = rel
    (tmp / CHECKPOINT_FILE).write_text(json.dumps({"format": FORMAT, **meta, "weights": weights,
                                                   "soft_prompts": soft}, indent=2))
    _replace_dir(tmp, path)
    return path


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def read_weights(checkpoint: Path) -> dict:
    """The trained tensors of a checkpoint, as written (model or adapter keys)."""
    from safetensors.torch import load_file

    meta = json.loads((checkpoint / CHECKPOINT_FILE).read_text())
    folder = {"full": checkpoint, "lora": checkpoint / ADAPTER_DIR}.get(meta["weights"])
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")) if folder else []:
        tensors.update(load_file(file))
    return tensors


def read_prompts(checkpoint: Path, tasks: list[str]) -> list:
    from safetensors.torch import load_file

    meta = json.loads((checkpoint / CHECKPOINT_FILE).read_text())
    return [load_file(checkpoint / meta["soft_prompts"][t])[PROMPT_KEY] for t in tasks]


def save_state(out: Path, state: dict) -> None:
    """Atomically write the loop state (a crash leaves the previous one intact)."""
    import torch

    tmp = out / f"{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def load_state(out: Path) -> dict | None:
    import torch

    path = out / STATE_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None
