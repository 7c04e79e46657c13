"""`genft eval`: a one-model plan in the store of `genft run` (outputs, resume, Ctrl-C
safety, the lock, one-line errors, `genft results`/`genft report` on its folder), and
sharding under a real two-process launch (torchrun)."""

from __future__ import annotations

import json
import sqlite3
import threading

import pandas as pd
import pytest

import genft
from genft.cli import main
from genft.errors import GenftError
from genft.experiments.runner import Backends
from genft.experiments.store import OutputLock, Store


pytestmark = pytest.mark.usefixtures("one_thread")


def stored_cells(out) -> list[dict]:
    """The cells `genft eval` stored in OUT/results.db (oldest first), each with its items;
    [] when nothing was stored."""
    if not (out / "results.db").is_file():
        return []
    store = Store(out / "results.db")
    try:
        return [{**c, "items": store.items(c["key"])} for c in store.cells()]
    finally:
        store.close()


def evaluate(loaded, out, tasks, shots, **kw):
    """`genft eval` on an already loaded model (the session's SmolLM2), as the CLI runs it."""
    backends = Backends(load_model=lambda ref, **options: loaded, **kw.pop("backends", {}))
    return genft.evaluate_tasks("smollm2-135m", tasks, out, shots=shots, formats=["prompt1"],
                                limit=2, progress=False, backends=backends, echo=lambda s: None,
                                **kw)


def test_eval_stores_cells_and_items_and_resumes(smol, tmp_path):
    outcome = evaluate(smol, tmp_path, "tweet_sentiment,bbc_headline", [0])
    assert outcome.computed == 2
    cells = stored_cells(tmp_path)
    assert [c["task"] for c in cells] == ["tweet_sentiment", "bbc_headline"]
    assert {"family", "shots", "format", "metrics", "n", "seconds", "model_label"} <= set(cells[0])
    assert cells[0]["provenance"]["info"]["transformers"] and cells[0]["n"] == 2
    assert "evaluating base: 2 cells" in (tmp_path / "genft.log").read_text()  # as the unit starts
    items = genft.load_items(tmp_path)
    assert set(items.columns) >= {"test_task", "shots", "format", "item_id", "prompt_hash",
                                  "prediction", "gold", "scores"}
    first = items[items["test_task"] == "tweet_sentiment"].reset_index()
    assert len(first) == 2 and set(json.loads(first.loc[0, "scores"])) == {"negative", "positive"}
    again = evaluate(smol, tmp_path, "tweet_sentiment,bbc_headline", [0])
    assert again.computed == 0  # both cells already stored
    assert len(stored_cells(tmp_path)) == 2


def test_eval_with_progress_bars_prints_each_cell_above_the_run_bar(tmp_path, capsys):
    """The default, interactive `genft eval`: the run bar is on and each finished cell's line
    is written above it (this crashed after the first cell, which was already stored)."""
    from test_run_fakes import make_backends

    outcome = genft.evaluate_tasks("smollm2-135m", "tweet_sentiment", tmp_path, shots=[0, 1],
                                   limit=2, progress=True, backends=make_backends(),
                                   echo=lambda s: None)
    assert outcome.computed == 2 and len(stored_cells(tmp_path)) == 2
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).replace("\r", "\n")
    assert "tweet_sentiment 0-shot prompt1: accuracy=" in lines
    assert "tweet_sentiment 1-shot prompt1: accuracy=" in lines


def test_interrupt_keeps_finished_cells(smol, tmp_path):
    from genft.evaluation import evaluate_cell

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate_cell(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        evaluate(smol, tmp_path, "tweet_sentiment", [0, 1],
                 backends={"evaluate_cell": interrupted})
    cells = stored_cells(tmp_path)
    assert len(cells) == 1 and cells[0]["shots"] == 0
    assert {it["cell_key"] for c in cells for it in c["items"]} == {cells[0]["key"]}
    assert len(cells[0]["items"]) == 2


def test_full_disk_while_saving_a_cell_is_one_line_and_keeps_finished_cells(
        smol, tmp_path, monkeypatch):
    """errors.md row 27: the disk fills up while the second cell is being stored."""
    real_add, calls = Store.add_cell, []

    def filling_disk(self, cell, record, items, *args, **kwargs):
        calls.append(cell.key)
        if len(calls) == 2:  # no page left, and an item that needs new ones
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count = {pages}")
            items = [{**it, "prediction": "so on " * 4000} for it in items]
        return real_add(self, cell, record, items, *args, **kwargs)

    monkeypatch.setattr(Store, "add_cell", filling_disk)
    with pytest.raises(GenftError, match=r"results\.db: disk full while storing cell \w+; 1 "
                                         r"finished cells are stored intact"):
        evaluate(smol, tmp_path, "tweet_sentiment", [0, 1])
    cells = stored_cells(tmp_path)
    assert len(cells) == 1 and cells[0]["shots"] == 0  # no half-stored cell left behind
    assert sqlite3.connect(tmp_path / "results.db").execute(
        "PRAGMA integrity_check").fetchone()[0] == "ok"
    monkeypatch.setattr(Store, "add_cell", real_add)
    again = evaluate(smol, tmp_path, "tweet_sentiment", [0, 1])
    assert again.computed == 1
    assert [c["shots"] for c in stored_cells(tmp_path)] == [0, 1]


def test_cli_eval_end_to_end(tmp_path, capsys):
    rc = main(["eval", "--tasks", "tweet_sentiment", "--shots", "2", "--formats", "prompt2",
               "--limit", "3", "--scoring", "first-token", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    [record] = stored_cells(tmp_path)
    assert (record["task"], record["shots"], record["format"], record["scoring"]) == \
        ("tweet_sentiment", 2, "prompt2", "first-token")
    assert 0 <= record["metrics"]["accuracy"] <= 1
    assert "tweet_sentiment 2-shot prompt2: accuracy=" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "tweet_sentimnt"], 'unknown task \'tweet_sentimnt\' (did you mean "tweet_sentiment"?)'),
    (["--tasks", "tweet_sentiment", "--shots", "33"], "only 32 few-shot examples"),
    (["--tasks", "tweet_sentiment", "--formats", "prompt3"], "--formats: unknown format"),
    (["--tasks", "tweet_sentiment", "--batch-size", "0"], "--batch-size must be"),
    (["--tasks", "tweet_sentiment", "--model", "./no/such/model"], "unknown model './no/such/model'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    rc = main(["eval", *argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("genft: error: ") and message in err[0]
    assert stored_cells(tmp_path / "out") == []


def test_adapter_for_another_base_model_is_one_line(tmp_path, capsys):
    """A LoRA adapter trained on a narrower model, pointing at the default model as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4,
                                        vocab_size=49152))
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "smollm2-135m"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    rc = main(["eval", "--model", str(tmp_path / "adapter"), "--tasks", "tweet_sentiment",
               "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "genft: error" in line]
    assert rc == 2 and len(errors) == 1 and "does not fit its base model" in errors[0]
    assert "Traceback" not in err  # (transformers' own weight-loading bar may precede the line)


def eval_results(out) -> dict:
    """(task, shots, format) -> (metrics, [(prediction, scores)]) as `genft eval` stored them.
    The one place the two-process test reads eval output."""
    results = {}
    for cell in stored_cells(out):
        key = (cell["task"], cell["shots"], cell["format"])
        assert key not in results, f"{key} written twice"
        results[key] = (cell["metrics"], [(x["prediction"], x["scores"] or {})
                                          for x in cell["items"]])
    return results


def test_two_processes_shard_and_gather_identical_results(tmp_path, tiny_model):
    """`torch.distributed.run --nproc_per_node 2 -m genft.cli eval`: both ranks score a share of
    the items, rank 0 writes each cell once, and the results equal a one-process run."""
    from test_distributed import rank_events, torchrun

    common = ["eval", "--model", tiny_model, "--tasks", "tweet_sentiment,bbc_headline",
              "--shots", "0,1", "--formats", "prompt1", "--limit", "5", "--batch-size", "2",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    log = tmp_path / "ranks.jsonl"
    two = torchrun([*common, "--out", str(tmp_path / "two")], log)
    assert two.returncode == 0, two.stderr[-3000:]
    evals = [e for e in rank_events(log) if e["event"] == "eval"]
    assert {(e["rank"], e["world_size"]) for e in evals} == {(0, 2), (1, 2)}
    share = {r: sum(e["batches"] for e in evals if e["rank"] == r) for r in (0, 1)}
    assert share[0] > 0 and share[1] > 0
    assert share[0] + share[1] == sum(e["of"] for e in evals if e["rank"] == 0)  # split, not doubled
    one, both = eval_results(tmp_path / "one"), eval_results(tmp_path / "two")
    assert set(one) == set(both) and len(one) == 4
    for key in one:
        (m1, items1), (m2, items2) = one[key], both[key]
        assert m1 == pytest.approx(m2, abs=1e-5)
        assert [p for p, _ in items1] == [p for p, _ in items2] and len(items1) == 5
        for (_, s1), (_, s2) in zip(items1, items2):
            assert s1.keys() == s2.keys() and all(abs(s1[k] - s2[k]) < 1e-5 for k in s1)




def test_eval_cells_carry_the_keys_genft_run_gives_the_base_model():
    """One grid: `genft eval` plans its cells as `genft run` plans the base model's, so the
    same model and settings share cell keys (scoring version included) across both."""
    from genft.experiments.config import EvalConfig, ExperimentConfig
    from genft.experiments.plan import build_eval_plan, build_plan

    settings = dict(shots=[0, 1], formats=["prompt1"], limit=4, scoring="first-token",
                    sampler="random", eval_seed=3)
    run = build_plan(ExperimentConfig(train_tasks=["tweet_sentiment"], methods={"ft": {}},
                                      test=["tweet_sentiment", "bbc_headline"], **settings))
    one = build_eval_plan(EvalConfig(tasks=["tweet_sentiment", "bbc_headline"], **settings))
    assert one.jobs == [] and len(one.cells) == 4
    assert [c.key for c in one.cells] == [c.key for c in run.cells_of(run.base.key)]


def test_results_items_and_report_work_on_an_eval_folder(smol, tmp_path, capsys):
    evaluate(smol, tmp_path, "tweet_sentiment,bbc_headline", [0])
    capsys.readouterr()
    assert main(["results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "results.csv")
    table = pd.read_csv(tmp_path / "results.csv")
    assert set(table["test_task"]) == {"tweet_sentiment", "bbc_headline"}
    assert set(table["model"]) == {"base"} and table["primary"].sum() == 2
    for fmt, read in (("csv", pd.read_csv), ("json", pd.read_json), ("parquet", pd.read_parquet)):
        assert main(["results", str(tmp_path), "--items", "--to", fmt]) == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / f"items.{fmt}")
        items = read(tmp_path / f"items.{fmt}")
        assert len(items) == 4  # 2 cells × 2 items
        assert set(items["cell_key"]) == set(table["cell_key"])
        tweets = items[items["test_task"] == "tweet_sentiment"]
        assert list(tweets["score"]) == [float(p == g) for p, g in
                                         zip(tweets["prediction"], tweets["gold"])]
        assert (tweets["metric"] == "accuracy").all()
        headlines = items[items["test_task"] == "bbc_headline"]
        assert (headlines["metric"] == "rouge_l").all() and headlines["score"].between(0, 1).all()
        assert all(isinstance(p, str) and p for p in items["gold"])
    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "tweet_sentiment" in html and "bbc_headline" in html


def test_a_second_eval_on_the_same_out_refuses_at_once(tmp_path, capsys):
    """Issue 16 point 4, as the `genft run` lock test: one line naming the holder's pid."""
    out = tmp_path / "out"
    with OutputLock(out):  # another open file description: flock conflicts as across processes
        assert main(["eval", "--tasks", "tweet_sentiment", "--shots", "0", "--limit", "2",
                     "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"genft: error: {out} is in use by another genft run (pid" in err
    assert stored_cells(out) == []


def test_two_concurrent_evals_store_every_cell_once(smol, tmp_path):
    """The first run holds OUT/.lock while it evaluates; the second, started meanwhile, is
    refused before it evaluates anything, and the first stores each cell once."""
    from genft.evaluation import evaluate_cell

    started, release, outcome = threading.Event(), threading.Event(), {}

    def held(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return evaluate_cell(*args, **kwargs)

    def first():
        outcome["first"] = evaluate(smol, tmp_path, "tweet_sentiment", [0, 1],
                                    backends={"evaluate_cell": held})

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60)
        second = []
        with pytest.raises(GenftError, match=r"is in use by another genft run \(pid \d+"):
            evaluate(smol, tmp_path, "tweet_sentiment", [0, 1],
                     backends={"evaluate_cell": lambda *a, **k: second.append(a)})
        assert second == []
    finally:
        release.set()
        thread.join(120)
    assert outcome["first"].computed == 2
    cells = stored_cells(tmp_path)
    assert sorted(c["shots"] for c in cells) == [0, 1]
    store = Store(tmp_path / "results.db")
    assert store.db.execute("SELECT count(*) FROM items").fetchone()[0] == 4
    assert [r["status"] for r in store.runs()] == ["finished"]  # the refused run recorded nothing
    store.close()
