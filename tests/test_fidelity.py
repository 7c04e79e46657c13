"""Research fidelity (issue 12): accepted answers, chance level, label-answer rates,
standard errors and paired comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from genft import stats
from genft.evaluation import metrics
from genft.experiments.results import (chance_level, first_word, label_answer_rate,
                                       normalized_score, paired_comparison)


# ------------------------------------------------------------------ 1. accepted answers

def test_every_generation_metric_scores_the_best_accepted_answer():
    names = ["exact_match", "token_f1", "rouge_l"]
    alone = metrics.compute(names, ["United States"], ["USA"])
    best = metrics.compute(names, ["United States"], ["USA"], references=[["USA", "United States"]])
    assert alone == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}
    assert best == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}
    hyp = ["the president of the united states met the press today"]
    one = metrics.compute(["bleu"], hyp, ["a man spoke"])["bleu"]
    multi = metrics.compute(["bleu"], hyp, ["a man spoke"], references=[[hyp[0]]])["bleu"]
    assert one < 0.1 and multi == pytest.approx(1.0)
    # items without references (None) score against their gold text only
    mixed = metrics.compute(["exact_match"], ["x", "United States"], ["x", "USA"],
                            references=[None, ["United States"]])
    assert mixed["exact_match"] == 1.0


def test_references_reach_the_evaluation_items(mirror_env):
    from genft.evaluation.encoding import build_inputs
    from genft.models import load_tokenizer
    from genft.tasks import registry

    task = registry().get("triviaqa")
    records = task.records("test")[:3]
    assert all(len(r["references"]) >= 1 for r in records)
    inputs = build_inputs(task, load_tokenizer("smollm2-135m"), 0, "prompt1", limit=3)
    assert [it.references for it in inputs.items] == [r["references"] for r in records]


# ------------------------------------------------------------------ 4. chance level

def test_chance_is_one_over_the_gold_classes_present(mirror_env):
    from genft.tasks import registry

    rte = registry().get("rte")
    assert len(rte.labels) == 3
    assert {r["output"] for r in rte.records("test")} == {"entailment", "neutral"}
    assert rte.chance == 0.5
    task = {"type": "classification", "labels": rte.labels, "chance": rte.chance}
    assert normalized_score(0.5, "accuracy", task) == 0
    assert registry().get("triviaqa").chance == 0.0


def test_task_yaml_chance_override(tmp_path):
    from genft.tasks.task import load_task_file

    src = Path(__file__).parent.parent / "genft" / "tasks" / "builtin" / "bbc_topic.yaml"
    text = src.read_text().replace("metrics: [accuracy, f1]", "metrics: [accuracy, f1]\nchance: 0.25")
    path = tmp_path / "bbc_topic.yaml"
    path.write_text(text)
    assert load_task_file(path).chance == 0.25
    assert chance_level("accuracy", {"type": "classification", "labels": list("abcde"),
                                     "chance": 0.25}) == 0.25
    # an old store's task description (no chance recorded): 1 / label words, as before
    assert chance_level("accuracy", {"type": "classification", "labels": list("abcde")}) == 0.2


# ------------------------------------------------------------------ 6. label-answer rate

def test_loose_label_answer_rate_reads_the_first_word():
    words = ["negative", "positive"]
    preds = ["Negative sentiment", "negative\n### Input: more", "POSITIVE!", "a headline",
             "", "\n\nnegative"]
    assert label_answer_rate(preds, words) == pytest.approx(3 / 6)
    assert label_answer_rate(preds, words, strict=True) == pytest.approx(2 / 6)  # POSITIVE!, \n\nnegative
    assert label_answer_rate(["Positive.", " negative"], words, strict=True) == 1.0
    assert first_word("Negative, sentiment") == "negative"


# ------------------------------------------------------------------ 7. uncertainty

def test_standard_errors_binomial_and_seeded_bootstrap():
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert math.isnan(stats.binomial_se(0.5, 0))
    values = np.random.default_rng(1).random(200)
    a = stats.bootstrap_se(values, seed=3)
    assert a == stats.bootstrap_se(values, seed=3)  # reproducible
    assert a == pytest.approx(values.std(ddof=1) / math.sqrt(200), rel=0.15)
    errors = metrics.standard_errors(["accuracy", "f1"], list("aabb"), list("abab"), ["a", "b"])
    assert errors["accuracy"] == pytest.approx(stats.binomial_se(0.5, 4))
    assert errors["f1"] > 0
    gen = metrics.standard_errors(["rouge_l", "bleu", "exact_match", "token_f1"],
                                  ["the cat sat", "a dog ran far", "x y", "blue sky"],
                                  ["the cat sat down", "a dog", "x y", "red sky"])
    assert set(gen) == {"rouge_l", "bleu", "exact_match", "token_f1"}
    assert all(v > 0 for v in gen.values())


def test_paired_bootstrap_sees_a_consistent_difference():
    rng = np.random.default_rng(0)
    base = rng.random(100)
    diff, se, p = stats.paired_bootstrap(base + 0.05, base, seed=0)
    assert diff == pytest.approx(0.05) and se < 1e-9 + 1e-6 and p <= 0.01
    noise = rng.normal(0, 0.3, 100)
    diff, se, p = stats.paired_bootstrap(base + noise, base, seed=0)
    assert se > 0.01 and p > 0.01
    assert stats.paired_bootstrap([1, 0], [0, 1], seed=5) == stats.paired_bootstrap([1, 0], [0, 1], seed=5)


def _store_with_cells(tmp_path):
    from genft.experiments.plan import Cell, ModelRef
    from genft.experiments.store import Store

    store = Store(tmp_path / "results.db")
    for key, model, correct in (("ca", "m", [1, 1, 1, 0] * 10), ("cb", "base", [0, 1, 0, 0] * 10)):
        cell = Cell(key, ModelRef(model, model), "t", "f", "classification", 0, "prompt1", "first",
                    "loglik", None, 0)
        items = [{"id": f"test:{i}", "prediction": "a" if c else "b", "gold": "a", "scores": None}
                 for i, c in enumerate(correct)]
        store.add_cell(cell, {"metrics": {"accuracy": np.mean(correct)}, "n": 40, "seconds": 1},
                       items, None, {"info": {"se": {"accuracy": 0.07}}})
    return store


def test_paired_comparison_matches_items_by_id(tmp_path):
    store = _store_with_cells(tmp_path)
    result = paired_comparison(store, "ca", "cb", "accuracy")
    store.close()
    assert result["n"] == 40 and result["diff"] == pytest.approx(0.5)
    assert 0 < result["se"] < 0.15 and result["p_value"] < 0.01


def test_tidy_table_has_se_column_and_old_cells_read_nan(tmp_path):
    import json

    from genft.experiments.results import load_results

    store = _store_with_cells(tmp_path)
    store.db.execute("UPDATE cells SET provenance = NULL WHERE key = 'cb'")  # an old cell
    store.start_run({}, {"tasks": {"t": {"type": "classification", "family": "f",
                                         "labels": ["a", "b"], "metrics": ["accuracy"]}}},
                    ["ca", "cb"])
    store.close()
    df = load_results(tmp_path).set_index("cell_key")
    assert "se" in df.columns
    assert df.loc["ca", "se"] == 0.07
    assert math.isnan(df.loc["cb", "se"])
    assert json  # noqa: the store keeps provenance as JSON


# ------------------------------------------------------------------ 3. training truncation

@pytest.fixture(scope="module")
def tokenizer():
    from genft.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def test_too_long_fticl_inputs_drop_whole_demos_oldest_first(tokenizer, tasks):
    from genft.tasks.prompts import TERMINATOR
    from genft.training.data import build_examples, train_pool, truncation

    task = tasks.get("tweet_sentiment")
    pool = train_pool(task, 24)
    full = build_examples([task], tokenizer, [pool], [4], 4096, seed=1)
    lengths = sorted(len(e.input_ids) for e in full)
    limit = lengths[len(lengths) // 2]  # about half the 4-shot inputs are too long
    short = build_examples([task], tokenizer, [pool], [4], limit, seed=1)
    assert len(short) == len(pool)
    counts = truncation(short, [pool])
    assert counts["skipped"] == 0 and 0 < counts["shortened"] < len(pool)
    for long, ex, rec in zip(full, short, pool):
        assert len(ex.input_ids) <= limit and ex.asked_demos == 4
        target = tokenizer.decode(ex.input_ids[ex.loss_start:])
        assert target == " " + rec["output"] + TERMINATOR  # the answer is whole
        if ex.n_demos < 4:
            assert ex.cut == 0
            # the newest demos are kept whole, the oldest dropped: a suffix of the 4-shot prompt
            kept = TERMINATOR.join(long.prompt.split(TERMINATOR)[4 - ex.n_demos:])
            assert ex.prompt == kept
        else:
            assert ex.prompt == long.prompt


def test_an_answer_that_does_not_fit_is_skipped_and_counted(tokenizer, tasks):
    from genft.training.data import build_examples, train_pool, truncation

    task = tasks.get("bbc_headline")
    pool = train_pool(task, 12)
    examples = build_examples([task], tokenizer, [pool], [0], 14, seed=0)
    counts = truncation(examples, [pool])
    assert counts["skipped"] > 0 and counts["total"] == 12
    assert counts["skipped"] + len(examples) == 12
    for ex in examples:  # what is kept still ends in its whole answer
        text = tokenizer.decode(ex.input_ids[ex.loss_start:])
        assert text.endswith("\n\n") and text.strip() in {r["output"] for r in pool}


def test_training_refuses_too_much_truncation_and_records_the_counts(tmp_path, tiny_model):
    import json

    from genft.errors import GenftError
    from genft.models import CHECKPOINT_FILE
    from genft.training import TrainConfig, train

    settings = dict(model=tiny_model, tasks=["tweet_sentiment"], method="fticl", shots=4,
                    train_size=8, batch_size=4, max_length=48, steps=1)
    with pytest.raises(GenftError, match="max_truncated_share 0.1"):
        train(TrainConfig(**settings, out=str(tmp_path / "a")), progress=False)
    assert not (tmp_path / "a" / "genft_train.json").exists()  # refused before claiming the folder
    final = train(TrainConfig(**settings, max_truncated_share=1.0, out=str(tmp_path / "b")),
                  progress=False)
    meta = json.loads((final / CHECKPOINT_FILE).read_text())
    assert meta["truncation"]["total"] == 8 and meta["truncation"]["shortened"] > 0


def test_store_keeps_truncation_counts_and_reads_old_checkpoints(tmp_path):
    from types import SimpleNamespace

    from genft.experiments.store import Store

    store = Store(tmp_path / "results.db")
    job = SimpleNamespace(key="j", label="fticl", method="fticl", tasks=("t",), train_size=8,
                          seed=0, settings={})
    counts = {"shortened": 3, "skipped": 1, "total": 8}
    store.add_checkpoint(key="j", job=job, step=None, path=tmp_path, answer_words=[],
                         param_change=None, seconds=1.0, run_id=None, truncation=counts)
    store.add_checkpoint(key="old", job=job, step=None, path=tmp_path, answer_words=[],
                         param_change=None, seconds=1.0, run_id=None)
    assert store.checkpoint("j")["truncation"] == counts
    assert store.checkpoint("old")["truncation"] is None
    store.close()


# ------------------------------------------------------------------ 9. per-layer parameter change

def test_diff_per_layer_locates_the_change(tmp_path, tiny_model, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genft.cli import main
    from genft.training.diff import param_change

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.add_(0.01)
    model.save_pretrained(tmp_path / "moved")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "moved")
    stats = param_change(tiny_model, tmp_path / "moved")
    layers = stats["by_layer"]
    assert sorted(layers) == ["0", "1"]
    assert layers["1"]["q_proj"]["mean_abs_change"] == pytest.approx(0.01, rel=1e-3)
    assert layers["0"]["q_proj"]["mean_abs_change"] == 0
    assert all(s["mean_abs_change"] == 0 for m, s in layers["1"].items() if m != "q_proj")
    # the per-module row pools the layers: half of q_proj's parameters moved by 0.01
    assert stats["by_module"]["q_proj"]["mean_abs_change"] == pytest.approx(0.005, rel=1e-3)
    assert "embed_tokens" not in layers["0"]
    assert main(["diff", tiny_model, str(tmp_path / "moved"), "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "mean_abs_change per layer" in out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["1"])
    assert "1.000e-02" in row
