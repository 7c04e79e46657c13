"""Which process this is, how many there are, and the few collectives genft needs.

One place reads the launchers' environment: ``torchrun`` / ``python -m
torch.distributed.run`` and ``accelerate launch --multi_gpu`` set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; ``srun`` sets
``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` (MASTER_ADDR must then be
exported by the job script unless it runs on one node). The process group is
started on first use: NCCL when a GPU is there, gloo on CPU. Without a launcher
every function is the identity of one process, and nothing is imported.

``GENFT_RANK_LOG=FILE`` makes every process append one JSON line per event
(``init``, ``train``, ``eval``) with its rank and the world size: how tests prove
that two processes took part.
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Callable, TypeVar

from genft.errors import GenftError

RANK_LOG_ENV = "GENFT_RANK_LOG"
T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def barrier() -> None:
    if world_size() > 1:
        _group().barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    dist = _group()
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def main_decides(decide: Callable[[], T]) -> T:
    """Run ``decide`` on rank 0 only; every rank gets its value, or raises its GenftError.

    What is missing (stored keys, finished checkpoints) is decided once, by the process that
    owns the store, so no rank can take a different branch and wait forever in a collective.
    """
    if world_size() == 1:
        return decide()
    outcome = None
    if is_main():
        try:
            outcome = ("ok", decide())
        except GenftError as e:
            outcome = ("error", str(e))
    kind, value = broadcast(outcome)
    if kind == "error":
        raise GenftError(value)
    return value


def note(event: str, **fields) -> None:
    """Append ``{event, rank, world_size, pid, ...}`` to $GENFT_RANK_LOG, if set (tests read it)."""
    path = os.environ.get(RANK_LOG_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "rank": rank(), "world_size": world_size(),
                       "pid": os.getpid(), **fields}, default=str)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _group():
    """torch.distributed, its default process group started from the launcher's environment."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist
    # srun: translate to torchrun's names, which Accelerate and torch both read
    os.environ.setdefault("RANK", str(rank()))
    os.environ.setdefault("WORLD_SIZE", str(world_size()))
    os.environ.setdefault("LOCAL_RANK", str(local_rank()))
    if "MASTER_ADDR" not in os.environ:
        if int(os.environ.get("SLURM_NNODES", "1")) > 1:
            raise GenftError("multi-node srun: export MASTER_ADDR (rank 0's host name, e.g. "
                             "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)) "
                             "and MASTER_PORT in the job script")
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", "29500")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend())
    # torn down before the interpreter exits: gloo aborts a process left holding a live group
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    note("init", backend=backend())
    return dist


def init() -> None:
    """Start the process group now (when launched with several processes)."""
    if world_size() > 1:
        _group()
