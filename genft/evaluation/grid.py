"""Evaluating a grid of cells (tasks × shots × formats) and saving each cell as it finishes.

Output folder::

    results.jsonl                one JSON record per finished cell (pandas.read_json(lines=True))
    items/<cell>.jsonl           one line per test item: id, prompt_hash, prediction, gold, scores

A cell's item file is written (atomically) before its record is appended, so after
Ctrl-C or a crash every record in results.jsonl is complete. Running the same
command again skips the cells already recorded for the same model and settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from genft.errors import GenftError, check_writable_dir, disk_full_is_one_line
from genft import distributed
from genft.evaluation.cell import CellResult, evaluate_cell
from genft.tasks.labels import check_label_words

RESULTS_FILE = "results.jsonl"
ITEMS_DIR = "items"


@dataclass(frozen=True)
class Cell:
    task: object  # genft.tasks.Task
    shots: int
    format: str


def plan_cells(tasks, shots: list[int] | None, formats: list[str]) -> list[Cell]:
    """Every (task, shots, format); `shots=None` uses each task's own list. Checked before any model
    is loaded: a shot count beyond a task's few-shot pool is an error."""
    cells = []
    for task in tasks:
        pool = len(task.records("fewshot"))
        for k in (task.spec.shots if shots is None else shots):
            if k < 0:
                raise GenftError(f"--shots: {k} is negative")
            if k > pool:
                raise GenftError(f"--shots {k}: task {task.name!r} has only {pool} few-shot "
                                 f"examples to draw demos from")
            cells.extend(Cell(task, k, fmt) for fmt in formats)
    return cells


def cell_key(record: dict) -> tuple:
    info = record.get("info", {})
    return (record["model"], record["task"], record["shots"], record["format"], record["sampler"],
            record["scoring"], info.get("seed"), info.get("limit"), info.get("data_hash"),
            info.get("chat_template", False))


def items_filename(result: CellResult) -> str:
    chat = ".chat" if result.info.get("chat_template") else ""  # wrapped prompts: other items
    return f"{result.task}.{result.shots}shot.{result.format}.{result.sampler}.{result.scoring}{chat}.jsonl"


def evaluate_grid(loaded, cells: list[Cell], out_dir: str | Path, *, sampler: str = "first",
                  limit: int | None = None, batch_size: int | str = 8, seed: int = 0,
                  scoring: str = "loglik", progress: bool = True, backend: str = "fast",
                  log=print) -> list[CellResult]:
    """Evaluate `cells` in order, appending each finished cell to `out_dir`; returns the new results.

    Every task's label words are checked against the tokenizer and the folder's
    writability is proved first, so a bad input stops the grid before any cell runs.
    """
    out = Path(out_dir)
    main = distributed.is_main()
    for task in {id(c.task): c.task for c in cells}.values():
        check_label_words(task, loaded.tokenizer, scoring, loaded.chat_template)
    # rank 0 alone writes, and decides what is missing: every rank evaluates the same cells
    done = distributed.main_decides(lambda: (check_writable_dir(out),
                                             _finished_keys(out / RESULTS_FILE))[1])
    results = []
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="cells", unit="cell", position=0, dynamic_ncols=True)
        log = bar.write
    for cell in cells:
        scoring_name = scoring if cell.task.type == "classification" else "greedy"
        key = (loaded.name, cell.task.name, cell.shots, cell.format, sampler, scoring_name, seed,
               limit, cell.task.data_hash, loaded.chat_template)
        if key in done:
            if main:
                log(f"{cell.task.name} {cell.shots}-shot {cell.format}: already in {out}, skipped")
        else:
            result = evaluate_cell(loaded, cell.task, cell.shots, cell.format, sampler=sampler,
                                   limit=limit, batch_size=batch_size, seed=seed, scoring=scoring,
                                   progress=progress, backend=backend)
            if main:
                with disk_full_is_one_line(out, f"saving cell {result.task} {result.shots}-shot "
                                                f"{result.format}",
                                           kept=f"every cell already in {RESULTS_FILE} is intact"):
                    save_cell(result, out)
                log(summary_line(result))
            results.append(result)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return results


def summary_line(result: CellResult) -> str:
    values = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    rate = result.n / result.seconds if result.seconds else 0.0
    return (f"{result.task} {result.shots}-shot {result.format}: {values} "
            f"({result.n} items, {result.seconds:.1f} s, {rate:.1f} items/s)")


def save_cell(result: CellResult, out: Path) -> None:
    """Items first (atomic rename), then the record line: a record always has its items."""
    items_dir = out / ITEMS_DIR
    items_dir.mkdir(parents=True, exist_ok=True)
    name = items_filename(result)
    tmp = items_dir / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for item in result.items:
            f.write(json.dumps({"task": result.task, "shots": result.shots, "format": result.format,
                                **item}, ensure_ascii=False) + "\n")
    os.replace(tmp, items_dir / name)
    record = {**result.to_record(), "items_file": f"{ITEMS_DIR}/{name}"}
    _append_line(out / RESULTS_FILE, json.dumps(record, ensure_ascii=False) + "\n")


def _append_line(path: Path, line: str) -> None:
    """Append one whole line or nothing: a failed write (a full disk) is cut back off, so the
    results file never ends in half a record. Unbuffered, so nothing is left to flush later."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = os.fstat(fd).st_size
    try:
        data = line.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, start)
        raise
    finally:
        os.close(fd)


def _finished_keys(path: Path) -> set[tuple]:
    if not path.is_file():
        return set()
    keys = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            keys.add(cell_key(json.loads(line)))
        except (json.JSONDecodeError, KeyError):
            raise GenftError(f"{path}:{n}: not a genft results record; use another --out") from None
    return keys
