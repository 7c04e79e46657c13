"""docs/errors.md is a contract: every row of its matrix names a test that exists, or says
which area owns it. A renamed or deleted test, or a new row without one, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def matrix_rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 7 and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_every_row_names_an_existing_test_or_an_owner():
    rows = matrix_rows()
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 30
    defined: dict[str, set[str]] = {}
    for number, *_, test in rows:
        refs = TEST_REF.findall(test)
        assert refs or "owner:" in test, f"row {number} names no test and no owner"
        for file, name in refs:
            if file not in defined:
                tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
                defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[file], f"row {number}: {file}::{name} does not exist"


def test_rows_without_a_test_are_listed_as_work_for_their_owner():
    text = DOC.read_text(encoding="utf-8")
    todo = text.split("## Still to do in other areas", 1)[1]
    for number, *_, test in matrix_rows():
        if "**missing**" in test or not TEST_REF.search(test):
            assert f"Row {number}" in todo, f"row {number} is open but not in 'Still to do'"
