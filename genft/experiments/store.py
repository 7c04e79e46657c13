"""The result store: one SQLite file (``results.db``) per output directory.

Tables: ``runs`` (one row per `genft run` invocation: config, versions, hardware,
wall time per stage), ``checkpoints`` (trained models, final and intermediate),
``cells`` (one evaluation each, keyed by its hash) and ``items`` (per-item
outputs). WAL mode, and one transaction per cell (the cell row and its items
together), so a run killed at any moment leaves only complete cells behind.

The output directory also holds ``.lock``: a run takes an exclusive
``fcntl.flock`` on it, so a second run on the same directory refuses at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from genft.errors import GenftError

DB_FILE = "results.db"
LOCK_FILE = ".lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
    config TEXT NOT NULL, meta TEXT NOT NULL, stages TEXT NOT NULL DEFAULT '{}',
    planned TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY, job_key TEXT NOT NULL, label TEXT NOT NULL, method TEXT NOT NULL,
    tasks TEXT NOT NULL, train_size INTEGER, seed INTEGER NOT NULL, step INTEGER,
    path TEXT NOT NULL, settings TEXT NOT NULL, answer_words TEXT NOT NULL,
    param_change TEXT, seconds REAL, created REAL NOT NULL, run_id INTEGER
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, model_key TEXT NOT NULL, model_label TEXT NOT NULL,
    task TEXT NOT NULL, family TEXT NOT NULL, type TEXT NOT NULL, shots INTEGER NOT NULL,
    format TEXT NOT NULL, sampler TEXT NOT NULL, scoring TEXT NOT NULL, limit_n INTEGER,
    seed INTEGER NOT NULL, metrics TEXT NOT NULL, n INTEGER NOT NULL, seconds REAL NOT NULL,
    created REAL NOT NULL, run_id INTEGER, provenance TEXT
);
CREATE TABLE IF NOT EXISTS items (
    cell_key TEXT NOT NULL REFERENCES cells(key), idx INTEGER NOT NULL, item_id TEXT NOT NULL,
    prompt_hash TEXT, prediction TEXT, gold TEXT, scores TEXT,
    PRIMARY KEY (cell_key, idx)
);
"""
CELL_COLUMNS = ("key,model_key,model_label,task,family,type,shots,format,sampler,scoring,limit_n,"
                "seed,metrics,n,seconds,created,run_id,provenance")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._add_missing_column("runs", "planned", "TEXT NOT NULL DEFAULT '[]'")  # older stores
        self._add_missing_column("cells", "provenance", "TEXT")  # stores before cell provenance
        self._add_missing_column("checkpoints", "truncation", "TEXT")  # {shortened, skipped, total}

    def _add_missing_column(self, table: str, column: str, decl: str) -> None:
        """Migrate a store written by an older genft in place; its rows are kept as they are."""
        if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
            with self.writing("the schema"):
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @classmethod
    def open_existing(cls, out: str | Path) -> Store:
        path = Path(out) / DB_FILE
        if not path.is_file():
            raise GenftError(f"{out}: no {DB_FILE} here; is this a `genft run` output directory?")
        return cls(path)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self, what: str = "results"):
        """All or nothing. On a full disk SQLite has already rolled the transaction back, so
        ROLLBACK only runs while one is open (else it would hide the real error)."""
        with self.writing(what):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    @contextmanager
    def writing(self, what: str):
        """A full disk or an I/O error while writing becomes one line naming the store; what
        was committed before stays intact (SQLite's journal guarantees it)."""
        try:
            yield
        except sqlite3.OperationalError as e:
            problem = _storage_problem(e)
            if problem is None:
                raise
            raise GenftError(f"{self.path}: {problem} while storing {what}; {self._stored_cells()} "
                             f"finished cells are stored intact — free space and run the same "
                             f"command again") from None

    def _stored_cells(self) -> str:
        try:
            return str(self.db.execute("SELECT count(*) FROM cells").fetchone()[0])
        except sqlite3.Error:
            return "the"

    # ------------------------------------------------------------ runs

    def mark_killed_runs(self) -> None:
        """Runs still 'running' when the lock is free again died without a word (SIGKILL, power)."""
        with self.writing("the run record"):
            self.db.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")

    def start_run(self, config: dict, meta: dict, planned: list[str] = ()) -> int:
        """Record a run and the cell keys its plan holds (the report shows the latest plan)."""
        with self.writing("the run record"):
            cur = self.db.execute(
                "INSERT INTO runs (started, status, config, meta, planned) VALUES (?, ?, ?, ?, ?)",
                (time.time(), "running", json.dumps(config), json.dumps(meta),
                 json.dumps(list(planned))))
        return cur.lastrowid

    def finish_run(self, run_id: int, status: str, stages: dict[str, float]) -> None:
        with self.writing("the run record"):
            self.db.execute("UPDATE runs SET finished = ?, status = ?, stages = ? WHERE id = ?",
                            (time.time(), status, json.dumps(stages), run_id))

    def runs(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [{**dict(r), "config": json.loads(r["config"]), "meta": json.loads(r["meta"]),
                 "stages": json.loads(r["stages"]), "planned": json.loads(r["planned"])}
                for r in rows]

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, key: str) -> dict | None:
        row = self.db.execute("SELECT * FROM checkpoints WHERE key = ?", (key,)).fetchone()
        return _checkpoint_dict(row) if row else None

    def add_checkpoint(self, *, key: str, job, step: int | None, path: Path, answer_words: list[str],
                       param_change: dict | None, seconds: float | None, run_id: int | None,
                       truncation: dict | None = None) -> None:
        """``truncation``: the trainer's ``{shortened, skipped, total}`` example counts."""
        with self.transaction(f"checkpoint {key}") as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints (key, job_key, label, method, tasks, train_size, "
                "seed, step, path, settings, answer_words, param_change, seconds, created, run_id, "
                "truncation) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, job.key, job.label, job.method, json.dumps(list(job.tasks)), job.train_size,
                 job.seed, step, str(path), json.dumps(job.settings), json.dumps(answer_words),
                 json.dumps(param_change) if param_change is not None else None, seconds,
                 time.time(), run_id, json.dumps(truncation) if truncation is not None else None))

    def checkpoints(self) -> list[dict]:
        return [_checkpoint_dict(r) for r in self.db.execute("SELECT * FROM checkpoints")]

    # ------------------------------------------------------------ cells

    def cell_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM cells")}

    def add_cell(self, cell, record: dict, items: list[dict], run_id: int | None,
                 provenance: dict | None = None) -> None:
        """Store a cell and its items in one transaction (all or nothing). ``provenance``
        (the evaluator's info: versions, seed, data hash, truncation; the config hash) is
        kept with the cell as JSON."""
        with self.transaction(f"cell {cell.key}") as db:
            cur = db.execute(
                f"INSERT OR IGNORE INTO cells ({CELL_COLUMNS}) "
                f"VALUES ({','.join('?' * len(CELL_COLUMNS.split(',')))})",
                (cell.key, cell.model.key, cell.model.label, cell.task, cell.family, cell.type,
                 cell.shots, cell.format, cell.sampler, cell.scoring, cell.limit, cell.seed,
                 json.dumps(record["metrics"]), record["n"], record["seconds"], time.time(), run_id,
                 json.dumps(provenance, default=str) if provenance is not None else None))
            if cur.rowcount == 0:
                return  # already stored (a concurrent writer cannot exist: the run holds the lock)
            db.executemany(
                "INSERT INTO items VALUES (?,?,?,?,?,?,?)",
                [(cell.key, i, str(it.get("id")), it.get("prompt_hash"), _text(it.get("prediction")),
                  _text(it.get("gold")), json.dumps(it.get("scores")))
                 for i, it in enumerate(items)])

    def cells(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM cells ORDER BY created").fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"]),
                 "provenance": json.loads(r["provenance"]) if r["provenance"] else {}} for r in rows]

    def items(self, cell_key: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM items", ()
        if cell_key is not None:
            query, args = query + " WHERE cell_key = ?", (cell_key,)
        rows = self.db.execute(query + " ORDER BY cell_key, idx", args).fetchall()
        return [{**dict(r), "scores": json.loads(r["scores"]) if r["scores"] else None} for r in rows]

    def predictions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, pred in self.db.execute("SELECT cell_key, prediction FROM items ORDER BY cell_key, idx"):
            out.setdefault(key, []).append(pred or "")
        return out


def _storage_problem(e: sqlite3.OperationalError) -> str | None:
    """'disk full' / 'disk I/O error' for SQLite's SQLITE_FULL / SQLITE_IOERR, else None."""
    code = getattr(e, "sqlite_errorcode", None)
    message = str(e).lower()
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in message:
        return "disk full"
    if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR or "disk i/o error" in message:
        return "disk I/O error"
    return None


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _checkpoint_dict(row) -> dict:
    d = dict(row)
    for k in ("tasks", "settings", "answer_words", "param_change", "truncation"):
        d[k] = json.loads(d[k]) if d.get(k) is not None else None
    return d


class OutputLock:
    """Exclusive use of an output directory, held for the whole run (released by the OS if
    the process dies, so a killed run never leaves a stale lock behind)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fh = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise GenftError(f"{self.path.parent} is in use by another genft run ({holder}); "
                             f"wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
