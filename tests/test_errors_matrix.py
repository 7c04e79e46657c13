"""docs/errors.md is a contract: every row of its matrix names a test that exists, or says
which area owns it. A renamed or deleted test, or a new row without one, fails here.

Below the contract: the rows with no other home (hostile YAML, damaged stores, checkpoint
write errors), one test each, fast (fake backends, the tiny model)."""

from __future__ import annotations

import ast
import errno
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from genft.cli import main
from genft.errors import GenftError
from genft.experiments.config import load_config
from genft.experiments.runner import run_experiment
from genft.tasks.task import load_task_file
from test_run import LOCAL_TASK, TINY, write_config
from test_run_fakes import make_backends

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


# ---------------------------------------------------------------- hostile input
# Each test below is a row of docs/errors.md; each failed before the fix it guards.


def alias_bomb(levels: int = 9) -> str:
    """Nine anchors, each a list of nine aliases to the one before: 9**9 values expanded."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genft: error: "), err[:2000]
    return err


@pytest.mark.parametrize("where", ["shots: *a8\n", "methods:\n  ft:\n    lr: *a8\n"])
def test_yaml_alias_bomb_is_refused_fast_in_one_line(tmp_path, capsys, where):
    """Row 32: `shots:` took 3 GB and crashed after ~2 min; `methods.<name>` hung > 5 min."""
    path = tmp_path / "bomb.yaml"
    path.write_text("train_tasks: [tweet_sentiment]\n" + alias_bomb() + where)
    start = time.monotonic()
    err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "out")])
    assert time.monotonic() - start < 10
    assert f"{path}: malformed YAML (aliases expand the document by " in err and "alias bomb" in err
    assert len(err) < 300 and not (tmp_path / "out").exists()


def test_yaml_alias_bomb_in_a_task_file_and_recursive_aliases(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(LOCAL_TASK + alias_bomb())
    with pytest.raises(GenftError, match=r"t\.yaml: malformed YAML \(aliases expand"):
        load_task_file(path)
    path.write_text(LOCAL_TASK + "loop: &x [*x]\n")
    with pytest.raises(GenftError, match=r"t\.yaml:\d+: malformed YAML \(an alias refers to its own"):
        load_task_file(path)
    # a few ordinary aliases (and YAML merge keys) stay allowed
    ok = tmp_path / "ok.yaml"
    ok.write_text("train_tasks: [tweet_sentiment]\ntraining: &t {steps: 3}\n"
                  "methods:\n  ft: {<<: *t, lr: 0.001}\n  lora: *t\n")
    assert load_config(ok).methods["lora"].steps == 3


def test_error_lines_echo_a_short_excerpt_of_the_input(tmp_path, capsys):
    """Row 33: one error line used to echo the whole value (39 MB)."""
    path = tmp_path / "big.yaml"
    path.write_text("train_tasks: [tweet_sentiment]\nlimit: " + "x" * 1_000_000 + "\n")
    err = one_line_error(capsys, ["run", str(path)])
    assert f"{path}: limit" in err and "(got 'xxxxx" in err and len(err) < 600
    path.write_text("train_tasks: [tweet_sentiment]\nseeds: [" + ", ".join(["x"] * 200_000) + "]\n")
    assert len(one_line_error(capsys, ["run", str(path)])) < 600


def test_duplicate_yaml_keys_are_refused_naming_the_line(tmp_path):
    """Row 34: the last of two equal keys won, silently."""
    path = tmp_path / "dup.yaml"
    path.write_text("train_tasks: [tweet_sentiment]\nlimit: 5\nseeds: [0]\nlimit: 50\n")
    with pytest.raises(GenftError, match=r"dup\.yaml:4: malformed YAML \(duplicate key 'limit' "
                                         r"\(first at line 2\)"):
        load_config(path)
    task = tmp_path / "t.yaml"
    task.write_text(LOCAL_TASK.replace("metrics: [accuracy]\n", "metrics: [accuracy]\nname: other\n"))
    with pytest.raises(GenftError, match=r"t\.yaml:\d+: malformed YAML \(duplicate key 'name'"):
        load_task_file(task)


@pytest.mark.parametrize("limit", [-5, 0, {"default": 0}])
def test_experiment_limit_below_one_is_refused(tmp_path, limit):
    """Row 35: `limit: -5` stored 245 of 250 items; `limit: 0` stored empty cells."""
    calls = []
    with pytest.raises(GenftError, match=r"exp\.yaml:\d+: limit.*: limit must be at least 1"):
        run_experiment(write_config(tmp_path, {**TINY, "limit": limit}), tmp_path / "out",
                       backends=make_backends(calls=calls), progress=False, echo=lambda s: None)
    assert calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", ".hidden", "", "/abs"])
def test_experiment_names_must_be_plain(tmp_path, name):
    """Row 36: `name: ".."` wrote into the current directory (runs/..)."""
    with pytest.raises(GenftError, match=r"exp\.yaml:\d+: name: must be a plain name"):
        load_config(write_config(tmp_path, {**TINY, "name": name}))
    with pytest.raises(GenftError, match=r"^config: name: must be a plain name"):
        run_experiment({**TINY, "name": name}, backends=make_backends(), echo=lambda s: None)


def test_the_whole_plan_is_validated_before_any_work(tmp_path):
    """Row 37: a shot count beyond a test set's few-shot pool failed only after earlier cells
    were computed (and a train size or FTICL demos beyond the training pool after training)."""
    calls = []
    cfg = {**TINY, "shots": {"sentiment": [0, 2], "summarization": [1, 99999]}}
    with pytest.raises(GenftError, match=r"bbc_headline.*planned with 99999 shots, but its few-shot "
                                         r"pool has only \d+ items"):
        run_experiment(write_config(tmp_path, cfg), tmp_path / "out",
                       backends=make_backends(calls=calls), progress=False, echo=lambda s: None)
    cfg = {**TINY, "methods": {"ft": {}, "fticl": {"shots": 9}}, "train_sizes": [4]}
    with pytest.raises(GenftError, match=r"methods\.fticl: 9 demos per input .* only 3 other items"):
        run_experiment(write_config(tmp_path, cfg), tmp_path / "out",
                       backends=make_backends(calls=calls), progress=False, echo=lambda s: None)
    assert calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_below_one_is_one_line(tmp_path, capsys, threads):
    """Row 38: `--threads 0` was a traceback from torch."""
    err = one_line_error(capsys, ["run", str(write_config(tmp_path, TINY)), "--threads", threads,
                                  "--out", str(tmp_path / "out")])
    assert f"--threads must be at least 1 (got {threads})" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a results.db that is not genft's


def finished_run(tmp_path):
    """A complete fake run: `genft run` on it again has nothing to compute or load."""
    cfg = write_config(tmp_path, TINY)
    out = tmp_path / "out"
    run_experiment(cfg, out, backends=make_backends(), progress=False, report=False,
                   echo=lambda s: None)
    return cfg, out


def _random_bytes(db):
    db.write_bytes(os.urandom(64 * 1024))


def _truncated(db):
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


def _metrics_not_json(db):
    with sqlite3.connect(db) as c:
        c.execute("UPDATE cells SET metrics = '{\"accuracy\": 0.5' WHERE rowid = 2")


def _dropped_column(db):
    with sqlite3.connect(db) as c:
        c.execute("ALTER TABLE cells DROP COLUMN n")


def _foreign(db):
    db.unlink()
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE photos (id INTEGER, path TEXT)")


def _checkpoint_outside(db):
    with sqlite3.connect(db) as c:
        c.execute("UPDATE checkpoints SET path = '/etc'")


DAMAGE = {"random bytes": (_random_bytes, "not a genft results store, or damaged"),
          "truncated": (_truncated, "not a genft results store, or damaged"),
          "metrics not JSON": (_metrics_not_json, "damaged row in cells .*metrics is not a JSON dict"),
          "dropped column": (_dropped_column, "table 'cells' lacks column\\(s\\) n"),
          "foreign database": (_foreign, "not a genft results store \\(it holds tables photos\\)"),
          "checkpoint outside": (_checkpoint_outside, "checkpoint path '/etc' lies outside the run")}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_or_foreign_results_db_is_one_line_in_run_report_and_results(tmp_path, capsys,
                                                                             damage):
    """Row 39: each of these was a traceback in `genft run`, `genft report`, `genft results`."""
    cfg, out = finished_run(tmp_path)
    db = out / "results.db"
    damage_it, message = DAMAGE[damage]
    damage_it(db)
    before = db.read_bytes()
    for argv in (["run", str(cfg), "--out", str(out), "--no-progress"], ["report", str(out)],
                 ["results", str(out)]):
        err = one_line_error(capsys, argv)
        assert err.startswith(f"genft: error: {db}: ") and re.search(message, err), (argv, err)
    if damage in ("random bytes", "foreign database"):
        assert db.read_bytes() == before  # nothing written into a file that is not genft's


def test_unwritable_store_or_output_is_one_line(tmp_path, capsys, monkeypatch):
    """Row 40: an unwritable directory (no chmod: CI may run as root, so the OS refusals are
    produced directly) gave tracebacks in `genft report` and `genft results`."""
    cfg, out = finished_run(tmp_path)
    real = sqlite3.connect

    def refuse(path, *a, **kw):
        if str(path).endswith("results.db"):
            raise sqlite3.OperationalError("unable to open database file")
        return real(path, *a, **kw)

    monkeypatch.setattr(sqlite3, "connect", refuse)
    for argv in (["run", str(cfg), "--out", str(out)], ["report", str(out)], ["results", str(out)]):
        err = one_line_error(capsys, argv)
        assert f"{out / 'results.db'}: " in err and "unable to open database file" in err
    monkeypatch.undo()
    (out / "report.html").mkdir()  # the report cannot be written over a folder
    err = one_line_error(capsys, ["report", str(out)])
    assert f"{out}: cannot write the report" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = one_line_error(capsys, ["results", str(out), "-o", str(blocker / "r.csv")])
    assert f"{blocker / 'r.csv'}: cannot write the results" in err


# ---------------------------------------------------------------- checkpoints and training state


class _FailingModel:
    """Writes part of a checkpoint, then the OS refuses (EFBIG: the file size limit)."""

    def __init__(self, err):
        self.err = err

    def save_pretrained(self, folder, state_dict=None):
        os.makedirs(folder, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(self.err, os.strerror(self.err), str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("err", [errno.EFBIG, errno.ENOSPC, errno.EIO])
def test_any_os_error_writing_a_checkpoint_is_one_line_and_leaves_no_temp_dir(tmp_path, err):
    """Row 41: EFBIG was a traceback and left a `.final-*` temp dir behind."""
    from genft.training.checkpoint import write_checkpoint

    why = "disk full" if err == errno.ENOSPC else os.strerror(err)
    with pytest.raises(GenftError, match=rf"final: cannot write the checkpoint \({why}: .*model"):
        write_checkpoint(tmp_path / "run" / "final", lm_state={}, lm=_FailingModel(err),
                         tokenizer=None, prompt_tensors=None, weights="full",
                         meta={"tasks": ["t"], "base_model": "m"})
    assert os.listdir(tmp_path / "run") == []


def test_truncated_training_state_with_resume_is_one_line(tmp_path, monkeypatch, tiny_model):
    """Row 42: a truncated training_state.pt with --resume was a torch traceback."""
    from test_train_methods import TINY as TRAIN  # noqa: N811

    from genft.training import TrainConfig, train
    from genft.training.loop import _Run

    original = _Run._log

    def crash(self, stage, step, *args):
        original(self, stage, step, *args)
        if step == 3:
            raise KeyboardInterrupt

    cfg = TrainConfig(**{**TRAIN, "method": "ft", "steps": 4, "save_every": 2}, model=tiny_model,
                      out=str(tmp_path / "run"))
    monkeypatch.setattr(_Run, "_log", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.undo()
    state = tmp_path / "run" / "training_state.pt"
    assert torch.load(state, weights_only=True)["step"] == 2
    state.write_bytes(state.read_bytes()[:300])
    with pytest.raises(GenftError, match=r"training_state\.pt: cannot read the training state, "
                                         r"truncated or damaged"):
        train(cfg, progress=False, resume=True)
    torch.save({"stage": "train", "step": 2, "checkpoint": "../../etc", "optimizer": {},
                "rng": torch.get_rng_state()}, state)
    with pytest.raises(GenftError, match=r"not a genft training state \(bad or missing checkpoint\)"):
        train(cfg, progress=False, resume=True)
