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
     "truncation": {"shortened": 0, "skipped": 0, "total": 400}, "torch_threads": 2,
     "weights": "full" | "lora" | "base",
     "soft_prompts": {"tweet_sentiment": "soft_prompts/tweet_sentiment.safetensors"}}

``torch_threads`` is the number of CPU threads torch trained with: on a CPU the
weights are bitwise a function of the config *and* of this number (it fixes how
floating-point sums are split), so two runs are compared at the same thread count.

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

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from genft.errors import GenftError, short

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
    from safetensors.torch import save_file

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
    try:
        torch.save(state, tmp)
        os.replace(tmp, out / STATE_FILE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GenftError(f"{out / STATE_FILE}: cannot write the training state ({_why(e)}); "
                         f"earlier checkpoints are intact — fix it and run the same command "
                         f"again") from None



def load_state(out: Path) -> dict | None:
    """The loop state --resume continues from; a truncated or foreign file is one line (the
    checkpoint it names must be one of this run's, inside ``out``)."""
    import torch

    state_keys = {"stage": str, "step": int, "checkpoint": str, "optimizer": dict,
                  "rng": torch.Tensor}
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, I/O: torch raises many kinds
        raise GenftError(f"{path}: cannot read the training state, truncated or damaged "
                         f"({short(e, plain=True)}); delete it to restart this stage from step 0, "
                         f"or train into a new --out") from None
    bad = ([k for k, kind in state_keys.items() if not isinstance(state.get(k), kind)]
           if isinstance(state, dict) else list(state_keys))
    if not bad and not (out / state["checkpoint"]).resolve().is_relative_to(out.resolve()):
        bad = ["checkpoint"]
    if bad:
        raise GenftError(f"{path}: not a genft training state (bad or missing {', '.join(bad)}); "
                         f"delete it to restart this stage from step 0, or train into a new --out")
    return state
