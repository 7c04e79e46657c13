"""A loaded task: its validated spec and its deterministic train / few-shot / dev / test records.

A *record* is a plain dict: the prompt fields named in the YAML's ``fields``,
``output`` (the gold answer: a label word or a reference text) and ``id``
(``"<split>:<row>"`` in the source, stable across runs).

Splits are deterministic and disjoint: the rows of each source split are
filtered, shuffled with the task's seed, and the roles drawing on that split take
consecutive slices in the order test, fewshot, dev, train. Adding a train split
therefore never changes the test items.

Splits are also disjoint by *text*: a row whose input fields (lower-cased, whitespace
collapsed) equal those of a row an earlier role took is removed before the next role
is carved (``duplicate of test`` / ``duplicate of fewshot`` / …): the bundled BBC
corpus repeats articles, and a test lead seen in training inflates in-domain scores.

Rows left out, and why, are counted in :attr:`Task.dropped`: rows failing a ``where``
condition, rows whose label is listed in ``label.drop``, duplicates (above), and rows with an *empty text*
— a prompt field or a generation answer that is empty or only whitespace. An empty
text cannot be a meaningful query or target, and one such row in a 40k-row file must
not stop a run, so it is dropped and counted rather than an error.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path


from genft.errors import GenftError
from genft.tasks.prompts import check_template, kshot_prompt, render
from genft.tasks.schema import (
    FORMATS, ROLES, ColumnRef, Condition, LabelSpec, Pick, SplitSpec, TaskSpec,
)
from genft.tasks.sources import fingerprint, read_source, source_files
from genft.yaml_files import load_yaml_model


# How records are carved into roles; part of the data hash, so a change to the rule
# (here: roles disjoint by text, not only by row) never reuses results of the old splits.
SPLIT_RULE = "split-rule 2: roles disjoint by normalized input text"


@dataclass
class Task:
    spec: TaskSpec
    path: Path
    _records: dict[str, list[dict]] | None = field(default=None, repr=False)
    _dropped: Counter = field(default_factory=Counter, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def labels(self) -> list[str]:
        return self.spec.label.words if self.spec.label else []

    @property
    def has_train(self) -> bool:
        return self.spec.splits.train is not None

    def records(self, role: str) -> list[dict]:
        """The records of one role: test, fewshot, dev or train."""
        if role not in ROLES:
            raise ValueError(role)
        if self._records is None:
            self._records = _build_records(self.spec, self.path.parent, self.path, self._dropped)
        if role not in self._records:
            raise GenftError(f"task {self.name!r} defines no {role!r} split ({self.path})")
        return self._records[role]

    @property
    def dropped(self) -> dict[str, int]:
        """Source rows left out, by reason: ``where``, ``label.drop``, ``empty text``,
        ``duplicate of <role>``."""
        self.records("test")
        return dict(self._dropped)

    def render(self, record: dict, fmt: str = "prompt1") -> str:
        with self._naming_template(fmt):
            return render(self.spec.template(fmt), record)

    def prompt(self, query: dict, demos: list[dict], fmt: str = "prompt1") -> str:
        with self._naming_template(fmt):
            return kshot_prompt(self.spec.template(fmt), query, demos)

    @contextmanager
    def _naming_template(self, fmt: str):
        """Rendering errors name the task file and template they come from."""
        try:
            yield
        except GenftError as e:
            raise GenftError(f"{self.path}: {fmt}: {e}") from None

    @cached_property
    def data_hash(self) -> str:
        """Changes when the data or anything that selects it changes."""
        import hashlib

        spec_part = self.spec.model_dump_json(include={"source", "fields", "output", "label", "where",
                                                       "splits", "seed"})
        h = hashlib.sha256(spec_part.encode())
        h.update(SPLIT_RULE.encode())
        h.update(fingerprint(self.spec.source, self.path.parent).encode())
        return h.hexdigest()[:16]

    @property
    def chance(self) -> float:
        """The primary metric's chance level: the YAML's ``chance``, else 1 / the number of
        gold classes that occur in the test split (RTE mapped to 3-way NLI has 3 label words
        but 2 gold classes: chance 1/2, not 1/3), 0 for generation."""
        if self.spec.chance is not None:
            return self.spec.chance
        if self.type != "classification":
            return 0.0
        return 1 / len({r["output"] for r in self.records("test")})

    def sizes(self) -> dict[str, int]:
        return {role: len(self._records_or_build().get(role, [])) for role in ROLES
                if getattr(self.spec.splits, role) is not None}

    def _records_or_build(self) -> dict[str, list[dict]]:
        self.records("test")
        return self._records


def load_task_file(path: Path) -> Task:
    """Parse and validate one task YAML; every problem is a GenftError naming the file."""
    spec = load_yaml_model(path, TaskSpec, "task settings")
    fields = set(spec.fields)
    for fmt in FORMATS:
        check_template(spec.template(fmt), fields, f"{path}: {fmt}")
    return Task(spec, path)


# ---------------------------------------------------------------- records


def _build_records(spec: TaskSpec, base_dir: Path, path: Path,
                   dropped: Counter) -> dict[str, list[dict]]:
    roles = {r: s for r in ROLES if (s := getattr(spec.splits, r)) is not None}
    raw = read_source(spec.source, base_dir, {s.split for s in roles.values()})
    out: dict[str, list[dict]] = {}
    dropped.clear()
    for split in dict.fromkeys(s.split for s in roles.values()):
        if split not in raw:
            raise GenftError(f"{path}: source has no split {split!r} (it has {sorted(raw)})")
        if not raw[split]:
            raise GenftError(f"{path}: source split {split!r} has no rows")
        records = _to_records(spec, raw[split], split, _origin(spec, base_dir, path, split), dropped)
        random.Random(spec.seed).shuffle(records)
        for role, split_spec in roles.items():
            if split_spec.split == split:
                records = _without_duplicates(records, out, spec, dropped)
                out[role], records = _take(split_spec, records, spec.label)
    if not out["test"]:
        reasons = ", ".join(f"{n} by {why}" for why, n in sorted(dropped.items())) or "none"
        raise GenftError(f"{path}: the test split is empty after filtering "
                         f"(rows dropped: {reasons})")
    return out


def text_key(record: dict, fields) -> str:
    """What makes two records the same text: their input fields, lower-cased, whitespace
    collapsed (the answer is not part of it: the same text with another label is still a
    test item the model has seen)."""
    return "\x1f".join(" ".join(str(record[f]).lower().split()) for f in fields)


def _without_duplicates(records: list[dict], taken: dict[str, list[dict]], spec: TaskSpec,
                        dropped: Counter) -> list[dict]:
    """The candidates of the next role, less those whose text an earlier role already holds.

    Roles are carved in the order test, fewshot, dev, train, so a text that occurs in the
    test split never reaches few-shot demos or training, and a few-shot demo never reaches
    training. Removed rows are counted as ``duplicate of <role>``.
    """
    if not taken:
        return records
    owner = {}
    for role, recs in taken.items():
        for r in recs:
            owner.setdefault(text_key(r, spec.fields), role)
    kept = []
    for r in records:
        role = owner.get(text_key(r, spec.fields))
        if role is None:
            kept.append(r)
        else:
            dropped[f"duplicate of {role}"] += 1
    return kept


def _origin(spec: TaskSpec, base_dir: Path, path: Path, split: str) -> Path:
    """What a row error names: the data file (local and package sources), else the task file."""
    if spec.source.kind == "hub":
        return path
    return source_files(spec.source, base_dir).get(split, path)


def _to_records(spec: TaskSpec, rows: list[dict], split: str, origin: Path,
                dropped: Counter) -> list[dict]:
    records = []
    for i, row in enumerate(rows, 1):
        where = f"{origin}: split {split!r} row {i}"
        if not all(_holds(c, row, where) for c in spec.where):
            dropped["where"] += 1
            continue
        rec = {}
        for name, column in spec.fields.items():
            rec[name] = _text(_column(row, column, where, f"field {name!r}"), column, where)
        if spec.label is not None:
            label = _label(spec.label, _column(row, spec.label.column, where, "label"), where)
            if label is None:
                dropped["label.drop"] += 1
                continue
            rec["output"] = label
        else:
            rec["output"] = _text(_column(row, spec.output, where, "output"), spec.output,
                                  where).strip()
        if not all(v.strip() for v in rec.values()):
            dropped["empty text"] += 1
            continue
        if spec.references is not None:
            refs = _column(row, spec.references, where, "references")
            if not isinstance(refs, list) or not refs:
                raise GenftError(f"{where}: references column {spec.references!r} must hold a "
                                 f"non-empty list of answers, got {refs!r}")
            rec["references"] = [str(r).strip() for r in refs]
        rec["id"] = f"{split}:{i}"
        records.append(rec)
    return records


def _column(row: dict, column: ColumnRef, where: str, role: str):
    """The value a column reference names: a column, a path ("a.b.0") or a Pick."""
    if isinstance(column, Pick):
        key = str(_column(row, column.by, where, role)).strip()
        if key not in column.columns:
            raise GenftError(f"{where}: {column.by}={key!r} is not among the pick's keys "
                             f"{sorted(column.columns)} (needed for {role})")
        return _column(row, column.columns[key], where, role)
    value = row.get(column)
    if value is None and column not in row and "." in column:
        value = row
        for step in column.split("."):
            if isinstance(value, dict):
                value = value.get(step)
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
            else:
                value = None
            if value is None:
                break
    if value is None:
        raise GenftError(f"{where}: missing column {column!r} (needed for {role}); "
                         f"row has {sorted(row)}")
    return value


def _text(value, column: ColumnRef, where: str) -> str:
    """A prompt field or answer must be one text; a list or mapping needs a path step."""
    if isinstance(value, (list, dict)):
        hint = "0" if isinstance(value, list) else next(iter(value), "key")
        raise GenftError(f"{where}: column {column!r} holds a {type(value).__name__}, not a text; "
                         f"pick one element, e.g. {column}.{hint}")
    return str(value)


def _holds(cond: Condition, row: dict, where: str) -> bool:
    """Whether a row passes a `where` condition; an empty or absent value never does.

    A plain column must exist (a typo fails loudly); a path ("answers.0") that leads
    nowhere counts as an absent value, so `where` can drop rows with empty lists.
    """
    if cond.column not in row and "." not in cond.column:
        raise GenftError(f"{where}: missing column {cond.column!r} (needed for a `where` condition)")
    try:
        value = _column(row, cond.column, where, "where")
    except GenftError:
        return False
    if value == "" or value == []:
        return False
    if cond.op in ("in", "not in"):
        inside = str(value) in {str(v) for v in cond.value}
        return inside if cond.op == "in" else not inside
    if cond.op in ("==", "!="):
        equal = str(value) == str(cond.value)
        return equal if cond.op == "==" else not equal
    try:
        a, b = float(value), float(cond.value)
    except (TypeError, ValueError):
        raise GenftError(f"{where}: {cond.column}={value!r} is not a number for {cond.op!r}") from None
    return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[cond.op]


def _label(spec: LabelSpec, raw, where: str) -> str | None:
    """Map a raw gold value to a label word; None drops the row (``label.drop``)."""
    key = str(raw).strip()
    if key in spec.drop:
        return None
    if spec.binarize:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise GenftError(f"{where}: label {raw!r} is not a number to binarize") from None
        return spec.binarize.above if value >= spec.binarize.threshold else spec.binarize.below
    if spec.map:
        if key not in spec.map:
            raise GenftError(f"{where}: label {key!r} is not in label.map {sorted(spec.map)} "
                             f"(add it, or list it under label.drop)")
        return spec.map[key]
    if key not in spec.words:
        raise GenftError(f"{where}: label {key!r} is not among the label words {spec.words} "
                         f"(map it with label.map, or list it under label.drop)")
    return key


def _take(split: SplitSpec, records: list[dict], label: LabelSpec | None):
    """Take this role's records off the front; return (taken, rest).

    Balanced: the same number per label, interleaved in label-word order; labels a
    split never has (RTE's "contradiction" when mapped to 3-way NLI) are left out,
    not allowed to empty the pool. Fewer rows than ``size``: take what there is.
    """
    size = split.size if split.size is not None else len(records)
    if not (split.balance and label):
        return records[:size], records[size:]
    by_label = defaultdict(list)
    for r in records:
        by_label[r["output"]].append(r)
    present = [w for w in label.words if by_label[w]]
    if not present:
        return [], records
    per_label = size // len(present)
    columns = [by_label[w][:per_label] for w in present]
    taken = [r for group in zip(*columns) for r in group]  # interleaved: neg, pos, neg, pos, …
    chosen = {id(r) for r in taken}
    return taken, [r for r in records if id(r) not in chosen]
