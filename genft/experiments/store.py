"""The result store: one SQLite file (``results.db``) per output directory.

Tables: ``runs`` (one row per `genft run` or `genft eval` invocation: config, versions, hardware,
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

from genft.errors import GenftError, short

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
_NOT_JSON = object()
CELL_COLUMNS = ("key,model_key,model_label,task,family,type,shots,format,sampler,scoring,limit_n,"
                "seed,metrics,n,seconds,created,run_id,provenance")


GENFT_TABLES = ("runs", "checkpoints", "cells", "items")
MIGRATED = {("runs", "planned"), ("cells", "provenance")}  # columns older stores gain on open


class Store:
    """A results.db. A file that is not genft's, or is damaged (random bytes, truncated, a
    dropped column, a row whose JSON is not JSON), is one GenftError naming the file, raised
    by whichever read or write meets it first — so `genft run`, `genft report` and
    `genft results` all say the same thing. Nothing is written into a foreign database."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.reading():
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self._refuse_foreign_tables()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._add_missing_column("runs", "planned", "TEXT NOT NULL DEFAULT '[]'")  # older stores
            self._add_missing_column("cells", "provenance", "TEXT")  # stores before cell provenance
            self._add_missing_column("checkpoints", "truncation", "TEXT")  # {shortened, skipped, total}
            self._refuse_missing_columns()

    def _refuse_foreign_tables(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables -= {t for t in tables if t.startswith("sqlite_")}
        if tables and not set(GENFT_TABLES) <= tables:
            self.db.close()
            raise GenftError(f"{self.path}: not a genft results store (it holds tables "
                             f"{', '.join(sorted(tables))}); choose another --out") from None

    def _refuse_missing_columns(self) -> None:
        reference = sqlite3.connect(":memory:")
        reference.executescript(SCHEMA)
        for table in GENFT_TABLES:
            expected = [r[1] for r in reference.execute(f"PRAGMA table_info({table})")]
            present = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in expected if c not in present]
            if missing:
                reference.close()
                raise GenftError(f"{self.path}: not a genft results store, or damaged: table "
                                 f"{table!r} lacks column(s) {', '.join(missing)}")
        reference.close()

    def _add_missing_column(self, table: str, column: str, decl: str) -> None:
        """Migrate a store written by an older genft in place; its rows are kept as they are."""
        if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
            with self.writing("the schema"):
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @classmethod
    def open_existing(cls, out: str | Path) -> Store:
        path = Path(out) / DB_FILE
        if not path.is_file():
            raise GenftError(f"{out}: no {DB_FILE} here; is this a `genft run` or `genft eval` "
                             f"output directory?")
        return cls(path)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def reading(self):
        """SQLite's own complaints (not a database, malformed image, unable to open, a missing
        column) become one line naming the file."""
        try:
            yield
        except sqlite3.Error as e:
            raise GenftError(f"{self.path}: not a genft results store, or damaged ({e}); "
                             f"restore it from a copy or move it aside to start afresh") from None

    def _rows(self, query: str, args=()) -> list:
        with self.reading():
            return self.db.execute(query, args).fetchall()

    def _json(self, table: str, row, column: str, kind: type | None = None):
        """One JSON column of a stored row; a value that is not JSON (or not a ``kind``) is
        a damaged store, named by file, table, row and column."""
        text = row[column]
        try:
            value = json.loads(text) if text is not None else None
        except (TypeError, ValueError):
            value = _NOT_JSON
        if value is _NOT_JSON or (kind is not None and not isinstance(value, kind)):
            key = row["key"] if "key" in row.keys() else row[0]
            raise GenftError(f"{self.path}: damaged row in {table} ({key}): {column} is not "
                             f"{'a JSON ' + kind.__name__ if kind else 'JSON'} "
                             f"(got {short(text)})")
        return value

    def _inside_run_folder(self, stored: str) -> Path:
        """A checkpoint path read from the store, resolved; it must lie inside the store's own
        folder (a path written elsewhere, or edited into the file, is refused: the store is
        data, and data does not choose what gets loaded from where)."""
        root = self.path.parent.resolve()
        p = Path(stored)
        if not p.is_absolute():  # old rows: relative to the cwd of the run that wrote them
            p = Path.cwd() / p if (Path.cwd() / p).resolve().is_relative_to(root) else root / p
        p = p.resolve()
        if not p.is_relative_to(root):
            raise GenftError(f"{self.path}: checkpoint path {short(stored)} lies outside the run "
                             f"folder {root}; refusing to use it")
        return p

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
        except sqlite3.DatabaseError as e:
            problem = _storage_problem(e)
            if problem is None:
                if isinstance(e, sqlite3.OperationalError) and "lock" in str(e):
                    raise
                raise GenftError(f"{self.path}: not a genft results store, or damaged ({e}) "
                                 f"while storing {what}") from None
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
        return [{**dict(r), "config": self._json("runs", r, "config", dict),
                 "meta": self._json("runs", r, "meta", dict),
                 "stages": self._json("runs", r, "stages", dict),
                 "planned": self._json("runs", r, "planned", list)}
                for r in self._rows("SELECT * FROM runs ORDER BY id")]

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, key: str) -> dict | None:
        rows = self._rows("SELECT * FROM checkpoints WHERE key = ?", (key,))
        return self._checkpoint_dict(rows[0]) if rows else None

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
        return [self._checkpoint_dict(r) for r in self._rows("SELECT * FROM checkpoints")]

    def _checkpoint_dict(self, row) -> dict:
        d = dict(row)
        for k, kind in (("tasks", list), ("settings", dict), ("answer_words", list),
                        ("param_change", dict), ("truncation", dict)):
            d[k] = self._json("checkpoints", row, k, kind) if d[k] is not None else None
        d["path"] = str(self._inside_run_folder(d["path"]))
        return d

    # ------------------------------------------------------------ cells

    def cell_keys(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT key FROM cells")}

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
        return [{**dict(r), "metrics": self._json("cells", r, "metrics", dict),
                 "provenance": self._json("cells", r, "provenance", dict) if r["provenance"] else {}}
                for r in self._rows("SELECT * FROM cells ORDER BY created")]

    def items(self, cell_key: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM items", ()
        if cell_key is not None:
            query, args = query + " WHERE cell_key = ?", (cell_key,)
        rows = self._rows(query + " ORDER BY cell_key, idx", args)
        return [{**dict(r), "scores": self._json("items", r, "scores") if r["scores"] else None}
                for r in rows]

    def predictions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, pred in self._rows("SELECT cell_key, prediction FROM items ORDER BY cell_key, idx"):
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
