"""The evaluation engine: k-shot classification scoring and greedy generation, exact and fast.

``evaluate_cell(loaded, task, shots, fmt)`` measures one cell and returns it; storing
cells is the experiments layer's (``genft eval`` runs a one-model plan through it).
See docs/evaluation.md.

The public names are imported lazily so that ``genft --help`` and the other
commands do not pay for importing torch.
"""

__all__ = ["CellResult", "evaluate_cell", "SCORING_VERSION"]

# Part of every stored cell's key: bump it when a change to scoring changes results, and
# every cell is recomputed. ("0.1.0": the value the keys have carried since the first release.)
SCORING_VERSION = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from genft.evaluation import cell

        return getattr(cell, name)
    raise AttributeError(f"module 'genft.evaluation' has no attribute {name!r}")
