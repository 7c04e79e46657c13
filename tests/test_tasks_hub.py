"""Every built-in Hub task loads through the real `datasets` code (from the local mirror of
tests/fixtures/hub), maps its fields and labels as the YAML says, and renders both formats at
0 shots and at its largest shot count. Offline without a mirror, they are still listed."""

from __future__ import annotations

import json

import pytest

from genft.cli import main
from genft.errors import GenftError
from genft.tasks.demos import make_sampler
from genft.tasks.sources import read_source

HUB_TASKS = ["xsum", "xlsum", "peerread", "cnn_dailymail", "socialiqa", "tweetqa", "sciq", "amazon",
             "amazon_food", "sst2", "yelp", "paws", "qqp", "stsb", "mnli_m", "mnli_mm", "rte", "gpt_nli",
             "rte_binary", "cb", "wic", "triviaqa", "webquestions", "wmt16_en_de", "wmt16_en_ro",
             "wmt14_en_fr", "wikilingua"]
OFFLINE_TASKS = ["tweet_sentiment", "bbc_headline", "bbc_headline_ood", "bbc_topic"]


def test_builtin_hub_tasks_are_exactly_these(hub_mirror):
    assert sorted(t.name for t in hub_mirror.all() if t.spec.source.kind == "hub") == sorted(HUB_TASKS)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_task_loads_and_renders_at_0_and_max_shots(hub_mirror, name):
    task = hub_mirror.get(name)
    tests, pool = task.records("test"), task.records("fewshot")
    assert tests and pool
    assert not {r["id"] for r in tests} & {r["id"] for r in pool}
    k = max(task.spec.shots)
    for fmt in ("prompt1", "prompt2"):
        for shots in (0, k):
            demos = make_sampler("first", pool, shots, task.labels).demos(tests[0], 0)
            prompt = task.prompt(tests[0], demos, fmt)
            assert prompt.endswith(task.render(tests[0], fmt))
            assert prompt.count(task.render(pool[0], fmt)) == (1 if shots else 0)
    if task.type == "classification":
        assert {r["output"] for r in tests + pool} <= set(task.labels)
        first_k = {r["output"] for r in pool[:k]}  # the study: every label appears in the demos
        assert first_k == {r["output"] for r in pool}
    else:
        assert all(r["output"] for r in tests + pool)


def test_pick_chooses_the_answer_column_named_by_the_label(hub_mirror):
    rows = _rows("lighteval/siqa", "validation")
    for r in hub_mirror.get("socialiqa").records("test"):
        row = rows[int(r["id"].split(":")[1]) - 1]
        assert r["answer"] == row["answer" + "ABC"[int(row["label"]) - 1]]
        assert r["output"] == row["question"]


def test_paths_read_nested_values_and_references_keep_every_alias(hub_mirror):
    r = hub_mirror.get("triviaqa").records("test")[0]
    assert r["references"][0] == r["output"] and len(r["references"]) == 2
    w = hub_mirror.get("wmt16_en_de").records("test")[0]
    assert w["input"].startswith("The ") and "(" in w["output"] and w["output"] != w["input"]
    for r in hub_mirror.get("webquestions").records("test") + hub_mirror.get("tweetqa").records("test"):
        assert r["output"] if "references" in r else r["answer"]


def test_where_on_a_path_drops_rows_with_empty_lists(hub_mirror):
    # the fixtures hold one empty answer list each in tweetqa's and webquestions' test splits
    assert len(hub_mirror.get("tweetqa").records("test")) == 15
    assert len(hub_mirror.get("webquestions").records("test")) == 15
    assert len(hub_mirror.get("sciq").records("test")) == 15  # one empty support paragraph


def test_label_mappings_follow_the_study(hub_mirror):
    rte = hub_mirror.get("rte")
    assert {r["output"] for r in rte.records("test")} == {"entailment", "neutral"}
    assert [r["output"] for r in rte.records("fewshot")[:4]] == ["entailment", "neutral"] * 2
    assert {r["output"] for r in hub_mirror.get("rte_binary").records("test")} == {
        "entailment", "not_entailment"}
    stsb_rows = _rows("nyu-mll/glue", "validation", "stsb")
    for r in hub_mirror.get("stsb").records("test"):
        score = stsb_rows[int(r["id"].split(":")[1]) - 1]["label"]
        assert r["output"] == ("yes" if score >= 3.5 else "no")
    yelp_rows = _rows("Yelp/yelp_review_full", "test")
    for r in hub_mirror.get("yelp").records("test"):  # label 0-4 is stars 1-5: >= 3.5 stars
        assert r["output"] == ("positive" if yelp_rows[int(r["id"].split(":")[1]) - 1]["label"] >= 3
                               else "negative")


def test_slices_of_one_split_never_overlap(hub_mirror):
    food = hub_mirror.get("amazon_food")
    test_text = {r["input"] for r in food.records("test")}
    assert test_text and not test_text & {r["input"] for r in food.records("fewshot")}
    assert all(r["id"].startswith("train[:50%]:") for r in food.records("test"))


def test_tasks_lists_every_task_offline_without_a_mirror(capsys, monkeypatch):
    from genft.tasks import sources
    from genft.tasks.registry import registry

    monkeypatch.delenv("GENFT_HUB_MIRROR", raising=False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: False)  # as on a machine offline
    registry.cache_clear()
    assert main(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(HUB_TASKS + OFFLINE_TASKS)
    assert all(rows[n]["sizes"] is None and "unavailable" in rows[n] for n in HUB_TASKS)
    assert rows["tweet_sentiment"]["sizes"]["test"] == 250  # offline tasks keep their sizes
    assert main(["tasks"]) == 0
    table = capsys.readouterr().out
    assert table.count("unavailable offline") == len(HUB_TASKS)


def test_genft_prompt_works_on_a_hub_task_through_the_mirror(capsys, mirror_env):
    assert main(["prompt", "mnli_m", "--shots", "3", "--format", "prompt2"]) == 0
    out = capsys.readouterr().out
    assert out.count("Consider the following texts: Text 1:") == 4
    assert [line.split("The relation is ")[1] for line in out.splitlines()
            if line.startswith("The relation is ")] == ["entailment", "neutral", "contradiction"]


def test_a_dataset_missing_from_the_mirror_is_one_clear_error(tmp_path, monkeypatch, hub_mirror):
    monkeypatch.setenv("GENFT_HUB_MIRROR", str(tmp_path))
    with pytest.raises(GenftError, match=r"'nyu-mll/glue' config 'rte' is not mirrored \(expected "):
        read_source(hub_mirror.get("rte").spec.source, tmp_path, {"validation"})


def _rows(dataset: str, split: str, config: str | None = None) -> list[dict]:
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "hub" / dataset / (config or "")
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
