"""The evaluation engine: k-shot classification scoring and greedy generation, exact and fast.

``evaluate_cell(loaded, task, shots, fmt)`` measures one cell; ``evaluate_grid``
runs many and writes results as each cell finishes; ``genft eval`` is the CLI.
See docs/evaluation.md.
"""

from genft.evaluation.cell import CellResult, evaluate_cell

__all__ = ["CellResult", "evaluate_cell"]
