"""Writing genft checkpoints (atomically) and the training state that --resume needs.

A checkpoint directory is what :func:`genft.models.load_model` reads (format in
genft/models.py). It is assembled in a temporary sibling directory and renamed
into place, so a crash never leaves half a checkpoint under the final name.

The loop state (optimizer, RNG, step) lives apart from the weights, in
``<out>/training_state.pt``: tensors and plain values only, loaded with
``weights_only=True``. The data order needs no state: it is a pure function of
the seed and the step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genft.models import CHECKPOINT_FILE

STATE_FILE = "training_state.pt"


def write_checkpoint(path: Path, *, lm_state: dict, lm, tokenizer, prompt_tensors: list | None,
                     weights: str, meta: dict) -> Path:
    """Write one genft checkpoint; ``weights`` is full | lora | base."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    if weights == "full":
        lm.save_pretrained(tmp, state_dict=lm_state)
        tokenizer.save_pretrained(tmp)
    elif weights == "lora":
        lm.save_pretrained(tmp / "adapter", state_dict=lm_state)
    soft = {}
    for task, tensor in zip(meta["tasks"], prompt_tensors or []):
        rel = f"soft_prompts/{task}.safetensors"
        (tmp / "soft_prompts").mkdir(exist_ok=True)
        save_file({"prompt": tensor.detach().float().cpu().contiguous()}, tmp / rel)
        soft[task] = rel
    (tmp / CHECKPOINT_FILE).write_text(json.dumps({"format": 1, **meta, "weights": weights,
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


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint, as written (model or adapter keys)."""
    meta = json.loads((checkpoint / CHECKPOINT_FILE).read_text())
    folder = {"full": checkpoint, "lora": checkpoint / "adapter"}.get(meta["weights"])
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")) if folder else []:
        tensors.update(load_file(file))
    return tensors


def read_prompts(checkpoint: Path, tasks: list[str]) -> list[torch.Tensor]:
    return [load_file(checkpoint / "soft_prompts" / f"{t}.safetensors")["prompt"] for t in tasks]


def save_state(out: Path, state: dict) -> None:
    """Atomically write the loop state (a crash leaves the previous one intact)."""
    tmp = out / f"{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def load_state(out: Path) -> dict | None:
    path = out / STATE_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None
