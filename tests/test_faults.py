"""Row 30 of docs/errors.md: `genft run` interrupted at seeded points across training,
evaluation and report writing, with SIGINT and SIGKILL, then run again.

Each interruption is a real signal to a real process (tests/test_run_fakes.py run as a
script, the fake backends slowed down so every stage lasts long enough to be hit). After
each, the same command is run again; its tidy results must equal an uninterrupted run's,
with no duplicate rows, `PRAGMA integrity_check` = ok, and the report complete. The default
suite interrupts at 3 points (one per stage); the slow test at all 12.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from genft.experiments.results import load_results
from genft.api import run as run_experiment  # run + report, as `genft run` does
from genft.experiments.store import Store
from test_run import TINY, _log, _start, _wait_for, item_rows, table, write_config
from test_run_fakes import make_backends

SEED = 20240607
SLEEP = 0.2  # the fakes' delay: seconds per evaluation cell, and per training job
CELLS = 11  # TINY's plan: 3 models × 3 cells + 2 intermediate checkpoints × 1 cell


@dataclass(frozen=True)
class Point:
    stage: str  # "training", "evaluation" or "report"
    sig: signal.Signals
    job: int = 0  # training: which job (0 ft, 1 fticl)
    cells: int = 0  # evaluation: interrupt once this many cells are logged
    delay: float = 0.0  # seconds after the stage is seen to start

    def __str__(self) -> str:
        return f"{self.stage}-{self.sig.name}-{self.job}-{self.cells}-{self.delay:.2f}"


def seeded_points(seed: int = SEED) -> list[Point]:
    """12 points: 4 per stage, 6 SIGINT and 6 SIGKILL, positions drawn from ``seed``."""
    rng = random.Random(seed)
    sigs = [signal.SIGINT, signal.SIGKILL] * 6
    rng.shuffle(sigs)
    points = []
    for i, stage in enumerate(["training", "evaluation", "report"] * 4):
        points.append(Point(stage, sigs[i], job=rng.randrange(2), cells=rng.randint(1, CELLS - 1),
                            delay=round(rng.uniform(0.0, SLEEP * 0.9 if stage != "report" else 0.5),
                                        2)))
    return points


def one_per_stage() -> list[Point]:
    """The default suite's 3: the first seeded point of each stage, signals mixed."""
    seen: dict[str, Point] = {}
    for p in seeded_points():
        seen.setdefault(p.stage, p)
    return list(seen.values())


def tidy(out: Path) -> pd.DataFrame:
    df = load_results(out, all_cells=True)
    return df.sort_values(["cell_key", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run (report included) and its config file."""
    root = tmp_path_factory.mktemp("reference")
    cfg = write_config(root, TINY)
    run_experiment(cfg, root / "out", backends=make_backends(), progress=False, echo=lambda s: None)
    return cfg, root / "out"


def _reach(point: Point, out: Path, proc) -> None:
    if point.stage == "training":
        label = ["training ft ", "training fticl "][point.job]
        _wait_for(lambda: label in _log(out), proc)
    elif point.stage == "evaluation":
        _wait_for(lambda: _log(out).count("cell ") >= point.cells, proc)
    else:  # every cell stored; build_report is under way
        _wait_for(lambda: " finished: " in _log(out), proc)
    time.sleep(point.delay)
    assert proc.poll() is None, f"{point}: the run ended before the kill point"


def interrupt_and_rerun(point: Point, reference: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, ref_out = reference
    out = tmp_path / "out"
    proc = _start(cfg, out, SLEEP, report=True)
    _reach(point, out, proc)
    proc.send_signal(point.sig)
    code = proc.wait(timeout=60)
    assert code == (130 if point.sig == signal.SIGINT else -signal.SIGKILL), point

    db = sqlite3.connect(out / "results.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", point
    db.close()
    partial = table(out)  # (asserts no duplicate keys)
    assert all(table(ref_out)[k] == v for k, v in partial.items()), point
    assert {k for k, *_ in item_rows(out)} == set(partial), point  # no half-stored cell
    report = out / "report.html"
    if report.exists():  # atomic: the previous report or none, never half of one
        assert report.read_text().rstrip().endswith("</html>"), point
    status = Store(out / "results.db").runs()[-1]["status"]
    if point.stage != "report":
        assert status == ("interrupted" if point.sig == signal.SIGINT else "running"), point

    outcome = run_experiment(cfg, out, backends=make_backends(), progress=False,
                             echo=lambda s: None)
    assert outcome.computed == CELLS - len(partial), point
    assert table(out) == table(ref_out), point
    assert item_rows(out) == item_rows(ref_out), point
    pd.testing.assert_frame_equal(tidy(out), tidy(ref_out))
    db = sqlite3.connect(out / "results.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", point
    assert report.read_text().rstrip().endswith("</html>")
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob("report_files/.*.tmp-*"))


def test_seeded_points_cover_every_stage_and_both_signals():
    points = seeded_points()
    assert len(points) == 12 and len(set(points)) == 12
    assert {p.stage for p in points} == {"training", "evaluation", "report"}
    assert sum(p.sig == signal.SIGINT for p in points) == 6
    assert {p.stage for p in one_per_stage()} == {"training", "evaluation", "report"}
    assert seeded_points() == points  # the same seed, the same points


@pytest.mark.parametrize("point", one_per_stage(), ids=str)
def test_interrupt_then_rerun_equals_uninterrupted_run(point, reference, tmp_path):
    interrupt_and_rerun(point, reference, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", seeded_points(), ids=str)
def test_seeded_dozen_interrupts_then_rerun_equals_uninterrupted_run(point, reference, tmp_path):
    interrupt_and_rerun(point, reference, tmp_path)
