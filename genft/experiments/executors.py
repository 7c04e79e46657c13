"""Where the runner's work runs: in this process (``local``, the default) or on a Ray cluster.

The runner decides *what* runs and records every result; an executor only decides
*where*. Work comes as :class:`Unit`\\ s: a generator function and its (picklable)
arguments, run wherever the executor puts it, and a callback the executor calls on the
driver with each value the generator yields. The callback stores the value and
returns the units it unlocks (a trained job unlocks the evaluation of its models).

``local`` runs units one after the other, depth-first (train a job, then evaluate
it). Under torchrun/srun every rank runs the same units in the same order: training
is data-parallel and evaluation sharded inside them (see genft.distributed).

``ray`` makes each unit a Ray task with the resources the config asks for
(``resources.train`` / ``resources.eval``), retried by Ray if its worker dies
(``resources.max_retries``). Evaluation units are streaming generators, so the
driver — the store's only writer — stores each cell as soon as it arrives.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from genft import distributed
from genft.errors import GenftError

EXECUTORS = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 5.0


@dataclass
class Unit:
    kind: str  # "train" | "eval": which resources it asks for
    work: Callable[..., Iterator]  # a module-level generator function (Ray pickles it)
    args: tuple
    on_result: Callable[[object], list["Unit"]]  # on the driver: store one result, return what it unlocks
    label: str = ""


class LocalExecutor:
    in_process = True

    def run(self, units: list[Unit]) -> None:
        queue = deque(units)
        while queue:
            unit = queue.popleft()
            unlocked = []
            for result in unit.work(*unit.args):
                unlocked += unit.on_result(result)
            queue.extendleft(reversed(unlocked))  # depth-first: a job's evaluations come next


class RayExecutor:
    in_process = False

    def __init__(self, address: str | None, resources):
        self.resources = resources
        self.ray = connect_ray(address)  # before the run takes its folder: a bad address stores nothing

    def run(self, units: list[Unit]) -> None:
        ray = self.ray
        tasks = {kind: ray.remote(_run_unit).options(
            num_cpus=spec.cpus, num_gpus=spec.gpus, max_retries=self.resources.max_retries,
            name=f"genft-{kind}")
            for kind, spec in (("train", self.resources.train), ("eval", self.resources.eval))}
        running: dict = {}

        def submit(unit: Unit) -> None:
            running[tasks[unit.kind].remote(unit.work, *unit.args)] = unit

        for unit in units:
            submit(unit)
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            try:
                ref = next(ready)
            except StopIteration:
                del running[ready]
                continue
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, GenftError):
                    raise GenftError(str(cause)) from None
                raise
            for unlocked in running[ready].on_result(result):
                submit(unlocked)


def _run_unit(work, *args):
    """The Ray task around every unit: a generator, so Ray streams each result back."""
    yield from work(*args)


def connect_ray(address: str | None):
    """Join the cluster at ``address`` ("auto": the one `ray start` made here; none: start a
    local instance). An address that does not answer is one line, before anything runs."""
    try:
        import ray
    except ImportError:
        raise GenftError("--executor ray needs Ray: pip install 'genft[ray]'") from None
    if address and address not in ("auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)),
                                     timeout=RAY_CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as e:
            raise GenftError(f"--ray-address {address}: no Ray cluster answers there "
                             f"({getattr(e, 'strerror', None) or e}); start one with "
                             f"`ray start --head` or give the head node's HOST:PORT") from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False)
    except ConnectionError as e:
        raise GenftError(f"--ray-address {address}: {e}") from None
    return ray


def make_executor(name: str, address: str | None, resources):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        if distributed.world_size() > 1:
            raise GenftError("--executor ray spreads jobs over a Ray cluster; launch it once (not "
                             "under torchrun/srun with several processes)")
        return RayExecutor(address, resources)
    raise GenftError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
