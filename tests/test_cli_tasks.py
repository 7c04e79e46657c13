"""Bad input at the command line: one clear line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genft.cli import main

GOOD = """\
name: {name}
family: sentiment
type: classification
source:
  kind: local
  path: data.jsonl
fields:
  input: text
label:
  column: label
  words: [negative, positive]
metrics: [accuracy]
prompt1: "### Input:\\n{{{{ input }}}}\\n### Sentiment:"
prompt2: "Text:{{{{ input }}}}\\nSentiment:"
shots: [0, 2]
splits:
  test: {{size: 4}}
  fewshot: {{size: 4}}
"""
ROWS = [{"text": f"text {i}", "label": ["negative", "positive"][i % 2]} for i in range(8)]


def make_task(folder: Path, yaml_text: str | None = None, rows=ROWS, name="mytask") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(yaml_text if yaml_text is not None else GOOD.format(name=name))
    if rows is not None:
        (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run_cli(capsys, *argv: str) -> str:
    """Run genft; assert exit 2 and exactly one line on stderr; return that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("genft: error: ") and "Traceback" not in err
    return lines[0]


def test_good_task_works(capsys, tmp_path):
    folder = make_task(tmp_path / "good")
    assert main(["prompt", "mytask", "--include", str(folder), "--shots", "2"]) == 0
    assert capsys.readouterr().out.count("### Sentiment:") == 3


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    text = GOOD.format(name="bad").replace("type: classification", "type: [classification")
    folder = make_task(tmp_path / "t", text)
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert f"{folder / 'task.yaml'}:" in line and "malformed YAML" in line
    assert line.split("task.yaml:")[1].split(":")[0].isdigit()


def test_unknown_key_suggests_the_nearest_valid_name(capsys, tmp_path):
    folder = make_task(tmp_path / "t", GOOD.format(name="bad").replace("prompt2:", "promt2:"))
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert "task.yaml:14: unknown key 'promt2' (did you mean \"prompt2\"?)" in line


def test_unknown_nested_key_suggests_the_nearest_valid_name(capsys, tmp_path):
    folder = make_task(tmp_path / "t", GOOD.format(name="bad").replace("  words:", "  wrds:"))
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert "unknown key 'label.wrds' (did you mean \"words\"?)" in line and "task.yaml:11" in line


def test_template_with_an_undefined_field(capsys, tmp_path):
    folder = make_task(tmp_path / "t", GOOD.format(name="bad").replace("Text:{{ input }}", "Text:{{ txt }}"))
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert "prompt2: template uses undefined field(s) ['txt']; defined fields: ['input']" in line


def test_missing_data_file(capsys, tmp_path):
    folder = make_task(tmp_path / "t", rows=None)
    line = run_cli(capsys, "prompt", "mytask", "--include", str(folder))
    assert f"data file not found: {folder / 'data.jsonl'}" in line


def test_row_missing_a_field_names_the_row(capsys, tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[2]["text"]
    folder = make_task(tmp_path / "t", rows=rows)
    line = run_cli(capsys, "prompt", "mytask", "--include", str(folder))
    assert "split 'train' row 3: missing column 'text' (needed for field 'input')" in line


def test_gold_label_outside_the_label_words(capsys, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[5]["label"] = "maybe"
    folder = make_task(tmp_path / "t", rows=rows)
    line = run_cli(capsys, "prompt", "mytask", "--include", str(folder))
    assert "row 6: label 'maybe' is not among the label words ['negative', 'positive']" in line


def test_more_shots_than_the_pool(capsys, tmp_path):
    folder = make_task(tmp_path / "t")
    line = run_cli(capsys, "prompt", "mytask", "--include", str(folder), "--shots", "9")
    assert "9 shots asked for, but the few-shot pool has only 4 items" in line


def test_unknown_task_suggests_the_nearest(capsys):
    line = run_cli(capsys, "prompt", "tweet_sentimnt")
    assert "unknown task 'tweet_sentimnt' (did you mean \"tweet_sentiment\"?)" in line


def test_unknown_model(capsys, tmp_path):
    line = run_cli(capsys, "eval", "--model", "no-such-model", "--tasks", "tweet_sentiment",
                   "--out", str(tmp_path / "out"))
    assert "unknown model 'no-such-model'" in line


def test_invalid_value_names_the_field(capsys, tmp_path):
    folder = make_task(tmp_path / "t", GOOD.format(name="bad").replace("[accuracy]", "[rouge_l]"))
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert "metrics ['rouge_l'] do not apply to classification tasks" in line


def test_duplicate_task_name(capsys, tmp_path):
    folder = make_task(tmp_path / "t", name="tweet_sentiment")
    line = run_cli(capsys, "tasks", "--include", str(folder))
    assert "task name 'tweet_sentiment' already defined in" in line


def test_index_out_of_range(capsys, tmp_path):
    folder = make_task(tmp_path / "t")
    line = run_cli(capsys, "prompt", "mytask", "--include", str(folder), "--index", "4")
    assert "--index 4 is out of range: mytask has 4 test items" in line


def test_tasks_json_lists_name_family_type_source_sizes(capsys, tmp_path, monkeypatch):
    from genft.tasks import sources

    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: False)  # never download here
    folder = make_task(tmp_path / "t")
    assert main(["tasks", "--json", "--include", str(folder), "--no-sizes"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mytask"] == {"name": "mytask", "family": "sentiment", "type": "classification",
                              "domain": "in", "source": "local"}
    assert main(["tasks", "--json", "--include", str(folder)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mytask"]["sizes"] == {"test": 4, "fewshot": 4}


@pytest.mark.parametrize("sampler", ["first", "random", "balanced", "bm25"])
def test_prompt_accepts_every_sampler(capsys, tmp_path, sampler):
    folder = make_task(tmp_path / "t")
    assert main(["prompt", "mytask", "--include", str(folder), "--shots", "2", "--sampler", sampler,
                 "--answer"]) == 0
    out = capsys.readouterr().out
    assert out.count("### Sentiment:") == 3 and "--- gold answer:" in out
