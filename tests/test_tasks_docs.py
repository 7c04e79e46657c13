"""The complete example in docs/tasks.md loads and runs as the doc says."""

from __future__ import annotations

import re
from pathlib import Path

from genft.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


def test_doc_example_yaml_loads_and_renders(tmp_path, capsys):
    example = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "reviews.yaml").write_text(example)
    stars = [5, 1, 4, 2, 3, 5, 4, 1] * 80
    (folder / "reviews.csv").write_text(
        "review,stars\n" + "".join(f"review number {i},{s}\n" for i, s in enumerate(stars)))
    assert main(["prompt", "reviews", "--include", str(folder), "--shots", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### Input:\nreview number ") and out.count("### Sentiment:") == 3
    assert main(["tasks", "--json", "--include", str(folder), "--no-sizes"]) == 0


def test_doc_lists_every_builtin_task(tasks):
    text = DOC.read_text()
    missing = [t.name for t in tasks.all() if f"`{t.name}`" not in text]
    assert not missing
