"""What `genft run`, `genft eval` and `genft train` print to the terminal, decided in one place.

* ``--quiet``: errors and the command's final line only (no progress bars, no warnings).
* default: genft's progress bars and warnings (``genft: warning: ...``).
* ``-v`` / ``--verbose``: also genft's debug and info log (a run's genft.log lines, live),
  and the libraries' warnings.

Whatever the level, libraries do not draw on the terminal: transformers' loading and saving
bars ("Loading weights", "Writing model shards") and datasets' are off, and library warnings
(FutureWarning, UserWarning, transformers' logger) are hidden unless ``-v``. Log lines are
written through tqdm, so they do not tear a progress bar.

``results_table`` is the compact table `genft run` ends with.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from tqdm.auto import tqdm

_HANDLERS: list[tuple[logging.Logger, logging.Handler]] = []  # what setup() installed


def add_options(parser) -> None:
    """--quiet / --verbose, the same on every command that trains or evaluates."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors and the final line (no progress bars, no warnings)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging: genft's log lines as they happen, library warnings")


def setup(args) -> bool:
    """Configure logging, warnings and library progress bars for ``args.quiet`` /
    ``args.verbose``; returns whether genft's own progress bars show (not with --quiet or
    --no-progress). Idempotent: a second call replaces what the first installed."""
    quiet, verbose = args.quiet, args.verbose
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets loads
    if quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # downloads show a bar unless --quiet
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    hf_logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)

    for logger, handler in _HANDLERS:
        logger.removeHandler(handler)
    _HANDLERS.clear()
    genft = logging.getLogger("genft")
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    genft.setLevel(level)
    genft.propagate = False  # the root handler below would print it twice
    # the handler's level too: a run's file logger (genft.run.*) logs INFO whatever this says
    _install(genft, _BarSafeHandler(_Format("genft")), level)
    root = logging.getLogger()
    _install(root, _BarSafeHandler(_Format(None)), logging.WARNING if verbose else logging.ERROR)
    if verbose:
        logging.captureWarnings(True)  # library warnings as log lines, through the handler
    else:
        warnings.simplefilter("ignore")  # FutureWarning, UserWarning, ... from libraries
    return not (quiet or getattr(args, "no_progress", False))


def _install(logger: logging.Logger, handler: logging.Handler, level: int | None = None) -> None:
    if level is not None:
        handler.setLevel(level)
    logger.addHandler(handler)
    _HANDLERS.append((logger, handler))


class _BarSafeHandler(logging.Handler):
    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Format(logging.Formatter):
    """``genft: message`` for information, ``genft: warning: message`` otherwise (the
    ``genft: error: ...`` style of the CLI's own errors); library records carry their logger."""

    def __init__(self, prefix: str | None):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        prefix = self.prefix or record.name
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{prefix}: {level}{record.getMessage()}"


# ---------------------------------------------------------------- the final results table


def results_table(out):
    """A rich Table of OUT's results: one row per model × test set with the test set's main
    metric, one column per (shots, format) of the grid; base and final models (intermediate
    checkpoints are in the report). None when nothing is stored yet."""
    import math

    import pandas as pd
    from rich.table import Table

    from genft.experiments.results import load_results

    df = load_results(out)
    df = df[df["primary"] & df["step"].isna()]
    if df.empty:
        return None
    formats = sorted(set(df["format"]))
    columns = sorted({(int(k), f) for k, f in zip(df["shots"], df["format"])})
    name = {c: f"{c[0]}-shot" + (f" {c[1]}" if len(formats) > 1 else "") for c in columns}
    varies = [col for col in ("train_size", "train_seed") if df[col].nunique() > 1]
    table = Table(title=f"{out}: main metric" + (f" ({formats[0]})" if len(formats) == 1 else ""),
                  title_justify="left", box=None, pad_edge=False)
    for header in ("model", "trained on", "test set", "metric"):
        table.add_column(header, overflow="fold")
    for c in columns:
        table.add_column(name[c], justify="right")
    for (_, task), rows in df.groupby(["model_key", "test_task"], sort=False):
        first = rows.iloc[0]
        trained = "" if pd.isna(first["train_tasks"]) else first["train_tasks"] + "".join(
            f" {col.removeprefix('train_')}={first[col]}" for col in varies)
        values = {(int(r["shots"]), r["format"]): r["value"] for _, r in rows.iterrows()}
        table.add_row(first["model"], trained, task, first["metric"],
                      *("" if c not in values or math.isnan(values[c]) else f"{values[c]:.3f}"
                        for c in columns))
    return table


def print_results(out) -> None:
    table = results_table(out)
    if table is not None:
        from rich.console import Console

        Console(soft_wrap=False).print(table)
