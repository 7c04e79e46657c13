"""Evaluation backends: what computes log-likelihoods and greedy answers (lm-eval's ``LM``).

A backend is built for one loaded model and answers the two requests of
lm-evaluation-harness's ``LM`` interface over *prepared* inputs
(:class:`genft.evaluation.encoding.CellInputs`: the exact token ids, so two backends can
differ only in computation, never in input):

* :meth:`Backend.loglikelihood` — per item, per continuation, the summed log-probability
  of its tokens given the item's context (the :class:`~genft.evaluation.scoring.Scoring`
  chose which tokens before, and reduces the sums after);
* :meth:`Backend.generate_until` — per item, the greedy continuation's text, stopped at
  EOS, at a blank line (the task terminator, ``model_io.generation_done``) or after
  ``max_new_tokens`` tokens.

Process sharding lives here, once, for every backend: a backend cuts a request into
independent units of work (:meth:`Backend.plan`: by default one item each; the fast
backend plans batches), and under a multi-process launch (torchrun, srun; see
genft.distributed) the units are dealt round-robin to the processes and the results
gathered, so every process returns the same, complete answer.

The built-ins are ``fast`` (prefix-cached, batched HF: genft.evaluation.fast, the default)
and ``reference`` (one item and one label at a time: genft.evaluation.reference); the fast
one is tested to equal the reference. A new backend (vLLM, a remote server) is one class
and one :func:`register_backend` call in a module imported before the run. The backend is
not part of any cell key (backends must agree); a stored cell names it in ``info["backend"]``.

This module imports neither torch nor the model code: config validation and ``genft
--help`` stay fast (the built-ins are imported on first use).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

from genft import distributed
from genft.errors import GenftError, unknown_name

DEFAULT_BACKEND = "fast"

OnItems = Callable[[int], None]  # called with the number of items just finished


class Backend(ABC):
    """Scores and generates for one loaded model (``loaded``: a genft.models.LoadedModel).

    Subclasses implement :meth:`score_units` and :meth:`generate_units` over the units
    :meth:`plan` made; callers use :meth:`loglikelihood` and :meth:`generate_until`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, loaded):
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer

    # ------------------------------------------------------------ what a backend implements

    def plan(self, inputs, request: str, batch_size: int) -> list:
        """Independent units of work for ``request`` ("loglikelihood" | "generate_until"):
        one list of item indices per unit by default. Units must not depend on the process
        count, so a sharded run computes exactly what one process would."""
        return [[i] for i in range(len(inputs.items))]

    @abstractmethod
    def score_units(self, inputs, units: list, soft_prompt, on_items: OnItems
                    ) -> dict[int, list[float]]:
        """{item index: [summed log-prob of each continuation]} for the items of ``units``."""

    @abstractmethod
    def generate_units(self, inputs, units: list, max_new_tokens: int, soft_prompt,
                       on_items: OnItems) -> dict[int, str]:
        """{item index: greedy continuation text} for the items of ``units``."""

    # ------------------------------------------------------------ what callers use

    def loglikelihood(self, inputs, *, soft_prompt=None, batch_size: int = 8,
                      progress: OnItems | None = None) -> list[list[float]]:
        """Per item (in order), the summed log-probability of each of its continuations.
        ``soft_prompt``: [V, hidden] virtual tokens in front of every context, or None."""
        units = self.plan(inputs, "loglikelihood", batch_size)
        return self._dealt(len(inputs.items), units, progress,
                           lambda mine, on: self.score_units(inputs, mine, soft_prompt, on))

    def generate_until(self, inputs, max_new_tokens: int, *, soft_prompt=None,
                       batch_size: int = 8, progress: OnItems | None = None) -> list[str]:
        """Per item (in order), the greedy continuation of its context, as text."""
        units = self.plan(inputs, "generate_until", batch_size)
        return self._dealt(len(inputs.items), units, progress,
                           lambda mine, on: self.generate_units(inputs, mine, max_new_tokens,
                                                                soft_prompt, on))

    def _dealt(self, n_items: int, units: list, progress: OnItems | None, run) -> list:
        """Run this process's share of ``units`` (round-robin), gather every process's
        results, and return them in item order."""
        rank, world = distributed.rank(), distributed.world_size()
        mine = units[rank::world]
        distributed.note("eval", backend=self.name, batches=len(mine), of=len(units))
        # every process advances at about the same rate: rank 0's bar counts for all
        on_items = (lambda n: progress(n * world)) if progress else (lambda n: None)
        results = {i: r for part in distributed.gather_objects(run(mine, on_items))
                   for i, r in part.items()}
        missing = [i for i in range(n_items) if i not in results]
        if missing:
            raise RuntimeError(f"backend {self.name!r} returned no result for items {missing[:5]}")
        return [results[i] for i in range(n_items)]


# Built-ins by import path, so that listing the names does not import torch.
_BACKENDS: dict[str, type[Backend] | str] = {
    "fast": "genft.evaluation.fast:FastBackend",
    "reference": "genft.evaluation.reference:ReferenceBackend",
}


def register_backend(cls: type[Backend], *, replace: bool = False) -> type[Backend]:
    """Make backend class ``cls`` known by ``cls.name`` to `genft eval --backend`, experiment
    configs (``backend:``) and the API; usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise GenftError(f"register_backend: {cls!r} is not a subclass of genft's Backend")
    if not cls.name:
        raise GenftError(f"register_backend: {cls.__name__} has no `name`")
    if cls.name in _BACKENDS and not replace:
        raise GenftError(f"backend {cls.name!r} is already registered (pass replace=True)")
    _BACKENDS[cls.name] = cls
    return cls


def unregister_backend(name: str) -> None:
    _BACKENDS.pop(name, None)


def get_backend(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise GenftError(unknown_name("backend", name, _BACKENDS))
    entry = _BACKENDS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return entry


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)
