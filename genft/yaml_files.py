"""Reading YAML files into validated pydantic models, with one-line errors.

Task YAMLs and experiment configs fail the same ways (missing file, not UTF-8,
malformed YAML, unknown or misspelled keys, wrong types), and a user should get
the same kind of answer for each: ``file:line: what is wrong (did you mean …)``.
YAML is parsed with ``safe_load`` only: config content is data, never code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from genft.errors import GenftError, did_you_mean

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], what: str) -> M:
    """Read ``path`` as YAML and validate it as ``model``; ``what`` names the expected mapping."""
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise GenftError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise GenftError(f"{path}: expected a mapping of {what} at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise GenftError(validation_message(path, text, e, model)) from None


def read_text(path: Path) -> str:
    """A config or task file as UTF-8 text; unreadable or non-UTF-8 files are one error line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GenftError(f"file not found: {path}") from None
    except OSError as e:
        raise GenftError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise GenftError(f"{path}:{line}: not UTF-8 text at byte {e.start} "
                         f"({raw[e.start:e.start + 1].hex()}); save the file as UTF-8") from None


def validation_message(path: Path, text: str, err: ValidationError, model: type) -> str:
    """First pydantic error as one line: file:line: field: problem (did you mean …).

    An unknown key comes first: a misspelled required key is also reported missing, and
    "unknown key 'promt2' (did you mean "prompt2"?)" is the message that helps."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in e["loc"]]
    key = loc[-1] if loc else ""
    line = _line_of(text, key)
    where = f"{path}:{line}" if line else str(path)
    field_path = ".".join(loc)
    if e["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        return f"{where}: unknown key {field_path!r}{did_you_mean(key, valid)}"
    if e["type"] == "missing":
        return f"{where}: missing required key {field_path!r}"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{where}: {field_path or 'task'}: {msg}" + (f" (got {e['input']!r})" if loc else "")


def _line_of(text: str, key: str) -> int | None:
    if not key or key.isdigit():
        return None
    m = re.search(rf"^\s*-?\s*{re.escape(key)}\s*:", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _valid_keys(model: type, loc: list[str]) -> list[str]:
    """The field names valid at a nested location of a pydantic model."""
    for part in loc:
        if part.isdigit():
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        ann = info.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        model = next((a for a in [ann, *args] if isinstance(a, type) and hasattr(a, "model_fields")),
                     None)
        if model is None:
            return []
    return list(model.model_fields)
