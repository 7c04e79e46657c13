"""The SQLite store: one transaction per cell, no duplicates, the output-directory lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from genft.errors import GenftError
from genft.experiments.plan import Cell, ModelRef
from genft.experiments.store import SCHEMA, OutputLock, Store


def cell(key="c1"):
    return Cell(key, ModelRef("m1", "base"), "t", "fam", "generation", 1, "prompt1", "first",
                "loglik", 5, 0)


ITEMS = [{"id": f"test:{i}", "prompt_hash": "p", "prediction": f"x{i}", "gold": "y",
          "scores": [0.5]} for i in range(3)]
RECORD = {"metrics": {"rouge_l": 0.25}, "n": 3, "seconds": 1.5}


def test_a_cell_and_its_items_are_stored_together_once(tmp_path):
    store = Store(tmp_path / "results.db")
    store.add_cell(cell(), RECORD, ITEMS, run_id=None)
    store.add_cell(cell(), {**RECORD, "metrics": {"rouge_l": 0.9}}, ITEMS, run_id=None)
    assert [c["metrics"] for c in store.cells()] == [{"rouge_l": 0.25}]  # first write wins
    assert [i["prediction"] for i in store.items("c1")] == ["x0", "x1", "x2"]
    assert store.cell_keys() == {"c1"}
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failing_cell_write_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "results.db")
    bad = ITEMS + [{"id": "x", "prediction": object()}]  # not serializable
    with pytest.raises(TypeError):
        store.add_cell(cell(), RECORD, bad, run_id=None)
    assert store.cells() == [] and store.items() == []


def test_runs_record_status_and_stages(tmp_path):
    store = Store(tmp_path / "results.db")
    run = store.start_run({"name": "x"}, {"versions": {"genft": "0"}})
    store.finish_run(run, "finished", {"training: ft": 12.5})
    (r,) = store.runs()
    assert r["status"] == "finished" and r["stages"] == {"training: ft": 12.5}
    assert r["finished"] >= r["started"]


def test_open_existing_needs_a_results_file(tmp_path):
    with pytest.raises(GenftError, match="no results.db"):
        Store.open_existing(tmp_path)


def test_lock_refuses_a_second_holder_even_in_another_process(tmp_path):
    with OutputLock(tmp_path):
        code = ("import sys; from genft.experiments.store import OutputLock\n"
                "from genft.errors import GenftError\n"
                f"try:\n    OutputLock(r'{tmp_path}').__enter__()\n"
                "except GenftError as e:\n    print(e); sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "in use by another genft run (pid" in r.stdout
    with OutputLock(tmp_path):  # released on exit: usable again
        pass


def test_the_database_is_plain_sqlite(tmp_path):
    store = Store(tmp_path / "results.db")
    store.add_cell(cell(), RECORD, ITEMS, run_id=None)
    store.close()
    db = sqlite3.connect(tmp_path / "results.db")
    assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 3


def _cap_pages(monkeypatch, extra_pages: int) -> None:
    """Simulate a full disk: every store connection may grow by only ``extra_pages`` pages."""
    real_init = Store.__init__

    def capped(self, path):
        real_init(self, path)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")

    monkeypatch.setattr(Store, "__init__", capped)


def test_full_disk_while_storing_is_one_line_and_committed_cells_stay(tmp_path, monkeypatch):
    from genft.experiments.runner import run_experiment
    from test_run import TINY, item_rows, table, write_config
    from test_run_fakes import make_backends

    def backends():  # long predictions: every cell needs a new page or two (4 KiB each)
        b = make_backends()
        evaluate = b.evaluate_cell

        def wordy(*args, **kwargs):
            result = evaluate(*args, **kwargs)
            for it in result.items:
                it["prediction"] = it["prediction"] + " and so on" * 60
            return result
        b.evaluate_cell = wordy
        return b

    cfg = write_config(tmp_path, TINY)
    reference = tmp_path / "reference"
    run_experiment(cfg, reference, backends=backends(), progress=False,
                   echo=lambda s: None)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _cap_pages(m, 8)
        with pytest.raises(GenftError) as err:
            run_experiment(cfg, out, backends=backends(), progress=False,
                           echo=lambda s: None)
    message = str(err.value)
    partial = table(out)
    assert "\n" not in message
    assert message.startswith(f"{out / 'results.db'}: disk full while storing cell ")
    assert f"; {len(partial)} finished cells are stored intact — free space and run the same" in message
    assert 0 < len(partial) < len(table(reference))
    assert all(table(reference)[k] == v for k, v in partial.items())
    db = sqlite3.connect(out / "results.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # no half-stored cell: every stored cell has all its items
    assert {k for k, *_ in item_rows(out)} == set(partial)

    run_experiment(cfg, out, backends=backends(), progress=False,
                   echo=lambda s: None)  # space freed: the same command completes
    assert table(out) == table(reference)
    assert item_rows(out) == item_rows(reference)


def test_a_store_from_before_cell_provenance_gains_the_column_and_keeps_its_cells(tmp_path):
    path = tmp_path / "results.db"
    old_schema = SCHEMA.replace(", provenance TEXT", "")
    assert old_schema != SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO cells VALUES ('old', 'm1', 'base', 't', 'fam', 'generation', 1, "
               "'prompt1', 'first', 'loglik', 5, 0, ?, 3, 1.0, 1.0, NULL)", ('{"rouge_l": 0.5}',))
    db.commit()
    db.close()
    store = Store(path)
    store.add_cell(cell("new"), RECORD, ITEMS, run_id=None,
                   provenance={"data_hash": "abc", "config_hash": "def",
                               "info": {"versions": {"genft": "0"}, "seed": 0, "truncated": 1}})
    cells = {c["key"]: c for c in store.cells()}
    assert cells["old"]["metrics"] == {"rouge_l": 0.5} and cells["old"]["provenance"] == {}
    assert cells["new"]["provenance"]["info"]["versions"] == {"genft": "0"}
    assert cells["new"]["provenance"]["data_hash"] == "abc"


def test_full_disk_while_writing_the_report_is_one_line(tmp_path, monkeypatch):
    import errno

    import genft.report.build as build
    from genft.api import run
    from test_run import TINY, table, write_config
    from test_run_fakes import make_backends

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build, "write_atomic", full)
    out = tmp_path / "out"
    with pytest.raises(GenftError, match=r": disk full while writing the report \(.*report_files.*"
                                         r"\); every finished cell is stored intact"):
        run(write_config(tmp_path, TINY), out, backends=make_backends(), progress=False,
            echo=lambda s: None)
    assert len(table(out)) == 11 and not (out / "report.html").exists()
