"""Reading YAML files into validated pydantic models, with one-line errors.

Task YAMLs and experiment configs fail the same ways (missing file, not UTF-8,
malformed YAML, unknown or misspelled keys, wrong types), and a user should get
the same kind of answer for each: ``file:line: what is wrong (did you mean …)``.
YAML is parsed with a ``yaml.SafeLoader`` only: config content is data, never code. The
loader also refuses what SafeLoader allows but no config needs: aliases that expand the
document past a small node budget (an "alias bomb": nine nested anchors are a billion
values, which pydantic would try to validate and echo), and duplicate keys (YAML says the
last one wins, silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from genft.errors import ECHO_LIMIT, GenftError, did_you_mean, short

M = TypeVar("M", bound=BaseModel)


ALIAS_BUDGET = 10_000  # values aliases may add to a document; a real config needs a handful


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and alias expansion past ``ALIAS_BUDGET``."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_alias_expansion(node)
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` is YAML's own override mechanism
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {short(key)} (first at line {first}); "
                                f"keep one", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_alias_expansion(root) -> None:
    """Refuse a document whose aliases would expand it by more than ``ALIAS_BUDGET`` values.

    The composer shares one node object per anchor, so the node graph is a DAG the size of
    the text; its expanded size (each node counted once per path to it) is computed in
    linear time with a memo, before anything is constructed or validated."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(
                problem="an alias refers to its own anchor (a recursive structure)",
                problem_mark=node.start_mark)
        open_nodes.add(id(node))
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        sizes[id(node)] = 1 + sum(size(child) for child in children)
        open_nodes.discard(id(node))
        return sizes[id(node)]

    extra = size(root) - len(sizes)
    if extra > ALIAS_BUDGET:
        raise yaml.composer.ComposerError(
            problem=f"aliases expand the document by {extra:,} values, more than the "
                    f"{ALIAS_BUDGET:,} genft allows (an alias bomb?); write the values out")


def parse_yaml(text: str):
    """``text`` as plain data (SafeLoader, duplicate keys and alias bombs refused)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml_model(path: Path, model: type[M], what: str) -> M:
    """Read ``path`` as YAML and validate it as ``model``; ``what`` names the expected mapping."""
    text, data = read_yaml_mapping(path, what)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise GenftError(validation_message(path, text, e, model)) from None


def read_yaml_mapping(path: Path, what: str) -> tuple[str, dict]:
    """``path``'s text and its YAML, which must be a mapping (of ``what``)."""
    text = read_text(path)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or e
        raise GenftError(f"{where}: malformed YAML ({problem})") from None
    except RecursionError:
        raise GenftError(f"{path}: malformed YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise GenftError(f"{path}: expected a mapping of {what} at the top level")
    return text, data


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


def validation_message(path: Path, text: str, err: ValidationError, model: type,
                       where: str | None = None) -> str:
    """First pydantic error as one line: file:line: field: problem (did you mean …).

    An unknown key comes first: a misspelled required key is also reported missing, and
    "unknown key 'promt2' (did you mean "prompt2"?)" is the message that helps. ``where``
    replaces ``file:line`` when the value came from elsewhere (a command-line override,
    which names its key itself: the unknown key is then named alone)."""
    e = first_error(err)
    loc = [str(p) for p in e["loc"]]
    key = loc[-1] if loc else ""
    if where is None:
        line = _line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        named = ".".join(loc)
    else:
        named = key
    field_path = ".".join(loc)
    if e["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        return f"{where}: unknown key {short(named)}{did_you_mean(key, valid)}"
    if e["type"] == "missing":
        return f"{where}: missing required key {short(named)}"
    msg = short(e["msg"].removeprefix("Value error, "), 4 * ECHO_LIMIT, plain=True)
    field_name = short(field_path, plain=True) if field_path else "task"
    return f"{where}: {field_name}: {msg}" + (f" (got {short(e['input'])})" if loc else "")


def first_error(err: ValidationError) -> dict:
    """The error a message reports: an unknown key before anything else."""
    errors = err.errors()
    return next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])


def _line_of(text: str, key: str) -> int | None:
    if not key or key.isdigit():
        return None
    m = re.search(rf"^\s*-?\s*{re.escape(key)}\s*:", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _valid_keys(model: type, loc: list[str]) -> list[str]:
    """The field names valid at a nested location of a pydantic model (a ``dict[str, M]``
    field's location names a key of the mapping, then M's fields)."""
    mapping_key = False
    for part in loc:
        if part.isdigit() or mapping_key:
            mapping_key = False
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        ann = info.annotation
        args = [ann, *(a for a in get_args(ann))]
        mapping_key = any(get_origin(a) is dict for a in args)
        args += [v for a in args if get_origin(a) is dict for v in get_args(a)[1:]]
        model = next((a for a in args if isinstance(a, type) and hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(model.model_fields)
