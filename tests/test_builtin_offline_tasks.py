"""The offline built-in tasks load from their PyPI packages with disjoint, deterministic splits."""

from collections import Counter

import pytest


@pytest.mark.parametrize("name", ["tweet_sentiment", "bbc_headline", "bbc_headline_ood", "bbc_topic"])
def test_splits_are_disjoint_and_nonempty(tasks, name):
    task = tasks.get(name)
    ids = {role: {r["id"] for r in task.records(role)} for role in task.sizes()}
    assert all(ids.values())
    roles = list(ids)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            assert not ids[a] & ids[b], (a, b)


def test_tweet_test_split_is_balanced_and_fewshot_interleaved(tasks):
    task = tasks.get("tweet_sentiment")
    assert Counter(r["output"] for r in task.records("test")) == {"negative": 125, "positive": 125}
    assert [r["output"] for r in task.records("fewshot")[:4]] == ["negative", "positive"] * 2


def test_headline_domains_do_not_overlap(tasks):
    in_dom = {r["id"] for r in tasks.get("bbc_headline").records("test")}
    out_dom = {r["id"] for r in tasks.get("bbc_headline_ood").records("test")}
    # Same source files, different topics: no article can be in both.
    assert len(in_dom) == 200 and len(out_dom) == 200
    assert not {tasks.get("bbc_headline").records("test")[0]["input"]} & {
        r["input"] for r in tasks.get("bbc_headline_ood").records("test")}
