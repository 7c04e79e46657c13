"""The evaluation engine: k-shot classification scoring and greedy generation, exact and fast.

``evaluate_cell(loaded, task, shots, fmt)`` measures one cell and returns it; storing
cells is the experiments layer's (``genft eval`` runs a one-model plan through it).
Two seams, each a registry: scoring rules (``register_scoring``, genft.evaluation.scoring)
and backends (``register_backend``, genft.evaluation.backends). See docs/evaluation.md.

The public names are imported lazily so that ``genft --help`` and the other
commands do not pay for importing torch.
"""

_PUBLIC = {"CellResult": "cell", "evaluate_cell": "cell",
           "Scoring": "scoring", "register_scoring": "scoring", "get_scoring": "scoring",
           "Backend": "backends", "register_backend": "backends", "get_backend": "backends"}

__all__ = [*_PUBLIC, "SCORING_VERSION"]

# Part of every stored cell's key: bump it when a change to scoring changes results, and
# every cell is recomputed. ("0.1.0": the value the keys have carried since the first release.)
SCORING_VERSION = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"genft.evaluation.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'genft.evaluation' has no attribute {name!r}")
