"""The bad-input matrix of docs/errors.md, task layer: one test per row.

Each bad input must give ONE line on stderr (``genft: error: <where>: <what>``), exit
status 2, no traceback; rows that are a policy rather than an error (empty texts,
very long inputs) test the policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genft.cli import main
from genft.errors import GenftError
from genft.tasks.task import load_task_file

TASK = """\
name: {name}
family: sentiment
type: classification
source:
  kind: local
  path: {data}
fields:
  input: text
label:
  column: label
  words: [{words}]
metrics: [accuracy]
prompt1: "### Input:\\n{{{{ input }}}}\\n### Sentiment:"
prompt2: "Text: {{{{ input }}}}\\nSentiment:"
max_new_tokens: 5
splits:
  test: {{size: 4}}
  fewshot: {{size: 4}}
"""
ROWS = [{"text": f"text {i}", "label": ["negative", "positive"][i % 2]} for i in range(8)]


def make_task(folder: Path, *, yaml_text: str | None = None, rows=ROWS, data="data.jsonl",
              words="negative, positive", name="mytask", replace: tuple[str, str] | None = None
              ) -> Path:
    """A local task folder: task.yaml + its data file (rows=None: no data file)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml_text if yaml_text is not None else TASK.format(name=name, data=data, words=words)
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    (folder / "task.yaml").write_text(text)
    if isinstance(rows, bytes):
        (folder / data).write_bytes(rows)
    elif rows is not None:
        (folder / data).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def error_line(capsys, *argv: str) -> str:
    """Run genft; assert exit 2 and exactly one line on stderr, no traceback; return the line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("genft: error: ") and "Traceback" not in err, err
    return lines[0]


def prompt_error(capsys, folder: Path, *extra: str) -> str:
    return error_line(capsys, "prompt", "mytask", "--include", str(folder), *extra)


# ---------------------------------------------------------------- the task file


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    folder = make_task(tmp_path, replace=("  column: label", "  column: [label"))
    line = error_line(capsys, "tasks", "--include", str(folder), "--no-sizes")
    assert f"{folder / 'task.yaml'}:11: malformed YAML" in line


def test_misspelled_key_names_line_and_nearest_key(capsys, tmp_path):
    folder = make_task(tmp_path, replace=("max_new_tokens:", "max_new_token:"))
    line = error_line(capsys, "tasks", "--include", str(folder), "--no-sizes")
    assert "task.yaml:15: unknown key 'max_new_token' (did you mean \"max_new_tokens\"?)" in line


def test_wrong_type_names_field_expected_and_got(capsys, tmp_path):
    folder = make_task(tmp_path, replace=("max_new_tokens: 5", "max_new_tokens: lots"))
    line = error_line(capsys, "tasks", "--include", str(folder), "--no-sizes")
    assert "task.yaml:15: max_new_tokens: Input should be a valid integer" in line
    assert "(got 'lots')" in line


def test_task_file_not_utf8_names_line_and_byte(capsys, tmp_path):
    folder = make_task(tmp_path)
    text = (folder / "task.yaml").read_bytes().replace(b"family: sentiment", b"family: sentim\xe9nt")
    (folder / "task.yaml").write_bytes(text)
    line = error_line(capsys, "tasks", "--include", str(folder), "--no-sizes")
    offset = text.index(b"\xe9")
    assert f"task.yaml:2: not UTF-8 text at byte {offset} (e9)" in line


def test_unknown_task_suggests_nearest_name(capsys, tmp_path):
    folder = make_task(tmp_path)
    line = error_line(capsys, "prompt", "mytaks", "--include", str(folder))
    assert "unknown task 'mytaks' (did you mean \"mytask\"?)" in line


# ---------------------------------------------------------------- data files


def test_missing_data_file_names_the_path(capsys, tmp_path):
    folder = make_task(tmp_path, rows=None)
    assert f"data file not found: {folder / 'data.jsonl'}" in prompt_error(capsys, folder)


@pytest.mark.parametrize("data, content", [("data.jsonl", b""), ("data.jsonl", b"\n \n"),
                                           ("data.csv", b"text,label\n"), ("data.json", b"[]")])
def test_empty_data_file(capsys, tmp_path, data, content):
    folder = make_task(tmp_path, rows=content, data=data)
    line = prompt_error(capsys, folder)
    assert f"{folder / data}: empty data file: no rows found" in line


def test_data_row_of_the_wrong_type_names_the_line(capsys, tmp_path):
    rows = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:3]) + b'["text 3", "negative"]\n'
    folder = make_task(tmp_path, rows=rows)
    line = prompt_error(capsys, folder)
    assert "data.jsonl:4: expected a JSON object (a row of named columns), got list" in line


def test_invalid_json_line_names_the_line(capsys, tmp_path):
    folder = make_task(tmp_path, rows=b'{"text": "a", "label": "negative"}\n{"text": oops}\n')
    assert "data.jsonl:2: invalid JSON (Expecting value)" in prompt_error(capsys, folder)


@pytest.mark.parametrize("body, message", [
    (b'"unclosed,negative\nmore,positive\n', "data.csv:3: malformed CSV (unexpected end of data)"),
    (b"one,two,negative\n", "data.csv:3: malformed CSV: 3 fields, but the header has 2 columns"),
    (b"\nalone\n", "data.csv:4: malformed CSV: 1 fields, but the header has 2 columns"),
])
def test_malformed_csv_names_the_line(capsys, tmp_path, body, message):
    folder = make_task(tmp_path, data="data.csv", rows=b"text,label\nfine,negative\n" + body)
    assert message in prompt_error(capsys, folder)


def test_row_missing_a_field_names_the_row(capsys, tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[5]["text"]
    folder = make_task(tmp_path, rows=rows)
    line = prompt_error(capsys, folder)
    assert "data.jsonl: split 'train' row 6: missing column 'text' (needed for field 'input')" in line


def test_empty_text_rows_are_dropped_and_counted(tmp_path):
    rows = [dict(r) for r in ROWS] + [{"text": "", "label": "negative"},
                                      {"text": "  \n\t", "label": "positive"}]
    task = load_task_file(make_task(tmp_path, rows=rows) / "task.yaml")
    kept = task.records("test") + task.records("fewshot")
    assert len(kept) == 8 and all(r["input"].strip() for r in kept)
    assert task.dropped == {"empty text": 2}


def test_empty_generation_answer_is_dropped_and_counted(tmp_path):
    text = TASK.format(name="gen", data="data.jsonl", words="x, y").replace(
        "type: classification", "type: generation").replace(
        "label:\n  column: label\n  words: [x, y]\n", "output: label\n").replace(
        "[accuracy]", "[rouge_l]")
    rows = [dict(r) for r in ROWS] + [{"text": "no answer here", "label": " "}]
    task = load_task_file(make_task(tmp_path, yaml_text=text, rows=rows) / "task.yaml")
    assert task.dropped == {"empty text": 1}
    assert "no answer here" not in [r["input"] for r in task.records("test") + task.records("fewshot")]


def test_test_split_empty_after_dropping_is_an_error(capsys, tmp_path):
    folder = make_task(tmp_path, rows=[{"text": " ", "label": "negative"}] * 3)
    line = prompt_error(capsys, folder)
    assert "task.yaml: the test split is empty after filtering (rows dropped: 3 by empty text)" in line


def test_non_utf8_data_names_file_line_byte_and_the_fix(capsys, tmp_path):
    raw = b'{"text": "fine", "label": "negative"}\n{"text": "caf\xe9", "label": "positive"}\n'
    folder = make_task(tmp_path, rows=raw * 4)
    line = prompt_error(capsys, folder)
    offset = raw.index(b"\xe9")
    assert f"data.jsonl:2: not valid utf-8 at byte {offset} (e9); set source.encoding" in line
    assert "source.encoding_errors: replace" in line


def test_non_utf8_data_with_the_suggested_settings(tmp_path):
    raw = (b'{"text": "fine", "label": "negative"}\n{"text": "caf\xe9", "label": "positive"}\n') * 4
    folder = make_task(tmp_path / "a", rows=raw, replace=("  kind: local", "  kind: local\n  encoding: latin-1"))
    texts = {r["input"] for r in load_task_file(folder / "task.yaml").records("test")}
    assert "café" in texts
    folder = make_task(tmp_path / "b", rows=raw,
                       replace=("  kind: local", "  kind: local\n  encoding_errors: replace"))
    texts = {r["input"] for r in load_task_file(folder / "task.yaml").records("test")}
    assert "caf\ufffd" in texts


def test_text_folder_non_utf8_file_names_that_file(tmp_path):
    from genft.tasks.sources import read_file

    (tmp_path / "sport").mkdir()
    (tmp_path / "sport" / "001.txt").write_bytes(b"Title\n\nA \xa315m fee.")
    with pytest.raises(GenftError, match=r"sport/001.txt:3: not valid utf-8 at byte 9 \(a3\)"):
        read_file(tmp_path, None)
    assert read_file(tmp_path, None, "utf-8", "replace")[0]["text"] == "A \ufffd15m fee."


def test_very_long_inputs_load_whole(tmp_path):
    """Policy: the task layer never truncates (no silent loss at load time), a CSV field over
    csv's default 128 KiB limit included; the model's context length is applied where the text
    is tokenized (left truncation, answer kept: see docs/errors.md)."""
    long_text = "word " * 60_000  # 300 kB
    csv_rows = "text,label\n" + "".join(f"short {i},{['negative', 'positive'][i % 2]}\n"
                                        for i in range(7)) + f'"{long_text}",negative\n'
    folder = make_task(tmp_path, data="data.csv", rows=csv_rows.encode())
    task = load_task_file(folder / "task.yaml")
    records = task.records("test") + task.records("fewshot")
    assert long_text in {r["input"] for r in records}
    assert task.render(next(r for r in records if len(r["input"]) > 1000)).endswith("### Sentiment:")


def test_training_truncates_long_inputs_from_the_left_keeping_the_answer():
    """The training half of the truncation policy (genft/training/data.py): the oldest prompt
    tokens go, the answer is always learned."""
    from genft.training.data import encode

    class CharTokenizer:  # one token per character: lengths are easy to reason about
        def __call__(self, texts):
            return type("Enc", (), {"input_ids": [[ord(c) for c in t] for t in texts]})()

    prompt, answer = "x" * 100 + "### Sentiment:", "positive"
    (ex,) = encode(CharTokenizer(), [prompt], [answer], max_length=40, task=0)
    text = "".join(map(chr, ex.input_ids))
    assert len(text) == 40 and text.endswith("### Sentiment: positive\n\n")
    assert text[ex.loss_start:] == " positive\n\n"  # the loss still covers the whole answer


# ---------------------------------------------------------------- labels, shots, templates


def test_gold_label_outside_the_label_words_names_the_row(capsys, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["label"] = "neutral"
    line = prompt_error(capsys, make_task(tmp_path, rows=rows))
    assert "row 3: label 'neutral' is not among the label words ['negative', 'positive']" in line


def test_duplicate_label_words_are_refused(capsys, tmp_path):
    folder = make_task(tmp_path, words="positive, positive")
    line = error_line(capsys, "tasks", "--include", str(folder), "--no-sizes")
    assert "task.yaml:11: label.words: label words must be distinct" in line


def test_shots_beyond_the_pool(capsys, tmp_path):
    line = prompt_error(capsys, make_task(tmp_path), "--shots", "5")
    assert "5 shots asked for, but the few-shot pool has only 4 items" in line


def test_negative_shots(capsys, tmp_path):
    assert "shots must be >= 0 (got -1)" in prompt_error(capsys, make_task(tmp_path), "--shots", "-1")


@pytest.mark.parametrize("expr, names", [
    ("''.__class__", "__class__"),
    ("''.__class__.__mro__", "__class__, __mro__"),
    ("input.__class__.__base__.__subclasses__()", "__class__, __base__, __subclasses__"),
    ("input['__class__']", "__class__"),
    ("input|attr('__globals__')", "__globals__"),
])
def test_template_reaching_for_python_internals_is_refused(capsys, tmp_path, expr, names):
    folder = make_task(tmp_path, replace=("Text: {{ input }}", "Text: {{ %s }}" % expr))
    line = prompt_error(capsys, folder)
    assert f"task.yaml: prompt2: template refused by the sandbox: it reaches for Python internals " \
           f"({names})" in line


def test_template_globals_are_not_reachable(capsys, tmp_path):
    folder = make_task(tmp_path, replace=("Text: {{ input }}", "Text: {{ cycler.__init__ }}"))
    assert "reaches for Python internals (__init__)" in prompt_error(capsys, folder)
    folder = make_task(tmp_path / "b", replace=("Text: {{ input }}", "Text: {{ lipsum() }}"))
    assert "template uses undefined field(s) ['lipsum']" in prompt_error(capsys, folder)


def test_sandbox_refuses_internals_at_render_time_too(tmp_path):
    """Defence in depth: a template that skipped the load-time check (built in code) is
    refused by the sandboxed renderer, and the error names the task file and format."""
    from genft.tasks.schema import TaskSpec
    from genft.tasks.task import Task

    task = load_task_file(make_task(tmp_path) / "task.yaml")
    bad = Task(TaskSpec.model_validate({**task.spec.model_dump(), "prompt2": "{{ input.__class__.__mro__ }}"}),
               task.path)
    record = task.records("test")[0]
    with pytest.raises(GenftError, match=r"task.yaml: prompt2: template refused by the sandbox: "
                                         r"access to attribute '__class__' of 'str' object is unsafe"):
        bad.render(record, "prompt2")
    assert bad.render(record, "prompt1").startswith("### Input:")  # the sandbox still renders fields
