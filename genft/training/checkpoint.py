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

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genft.errors import GenftError, short
from genft.models import CHECKPOINT_FILE

STATE_FILE = "training_state.pt"


def write_checkpoint(path: Path, *, lm_state: dict, lm, tokenizer, prompt_tensors: list | None,
                     weights: str, meta: dict) -> Path:
    """Write one genft checkpoint; ``weights`` is full | lora | base."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        _write(tmp, lm_state=lm_state, lm=lm, tokenizer=tokenizer, prompt_tensors=prompt_tensors,
               weights=weights, meta=meta)
        _replace_dir(tmp, path)
    except OSError as e:  # EFBIG, ENOSPC, EIO, EACCES …: all alike, and no temp folder left
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise GenftError(f"{path}: cannot write the checkpoint ({_why(e)}); earlier checkpoints "
                         f"are intact — fix it and run the same command again") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(tmp: Path, *, lm_state, lm, tokenizer, prompt_tensors, weights: str, meta: dict) -> None:
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


def _why(e: OSError) -> str:
    what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else short(what, plain=True)


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
    try:
        torch.save(state, tmp)
        os.replace(tmp, out / STATE_FILE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GenftError(f"{out / STATE_FILE}: cannot write the training state ({_why(e)}); "
                         f"earlier checkpoints are intact — fix it and run the same command "
                         f"again") from None


STATE_KEYS = {"stage": str, "step": int, "checkpoint": str, "optimizer": dict, "rng": torch.Tensor}


def load_state(out: Path) -> dict | None:
    """The loop state --resume continues from; a truncated or foreign file is one line (the
    checkpoint it names must be one of this run's, inside ``out``)."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, I/O: torch raises many kinds
        raise GenftError(f"{path}: cannot read the training state, truncated or damaged "
                         f"({short(e, plain=True)}); delete it to restart this stage from step 0, "
                         f"or train into a new --out") from None
    bad = ([k for k, kind in STATE_KEYS.items() if not isinstance(state.get(k), kind)]
           if isinstance(state, dict) else list(STATE_KEYS))
    if not bad and not (out / state["checkpoint"]).resolve().is_relative_to(out.resolve()):
        bad = ["checkpoint"]
    if bad:
        raise GenftError(f"{path}: not a genft training state (bad or missing {', '.join(bad)}); "
                         f"delete it to restart this stage from step 0, or train into a new --out")
    return state
