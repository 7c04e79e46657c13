"""The demonstration samplers: first-k, seeded random, label-balanced, BM25-nearest."""

from __future__ import annotations

import pytest

from genft.errors import GenftError
from genft.tasks.demos import make_sampler

POOL = [{"input": f"item {i} about {topic}", "output": label, "id": f"train:{i}"}
        for i, (topic, label) in enumerate(
            [("football match goals", "pos"), ("rain and storms", "neg"), ("cheap phone battery", "neg"),
             ("lovely garden roses", "pos"), ("stock market crash", "neg"), ("tennis final win", "pos"),
             ("late train delays", "neg"), ("new bakery bread", "pos")])]


def test_first_k_is_the_same_prefix_for_every_query():
    s = make_sampler("first", POOL, 3)
    assert s.demos(POOL[7], 0) == s.demos(POOL[6], 5) == POOL[:3]


def test_seeded_random_is_reproducible_and_varies_by_index_and_seed():
    a, b = make_sampler("random", POOL, 3, seed=1), make_sampler("random", POOL, 3, seed=1)
    assert [a.demos({}, i) for i in range(5)] == [b.demos({}, i) for i in range(5)]
    assert len({tuple(d["id"] for d in a.demos({}, i)) for i in range(10)}) > 1
    other = make_sampler("random", POOL, 3, seed=2)
    assert [a.demos({}, i) for i in range(10)] != [other.demos({}, i) for i in range(10)]
    assert all(len({d["id"] for d in a.demos({}, i)}) == 3 for i in range(10))  # no repeats


def test_balanced_covers_every_label_even_when_the_pool_is_sorted():
    pool = sorted(POOL, key=lambda r: r["output"])  # all neg first: first-k would miss pos
    assert {d["output"] for d in make_sampler("first", pool, 2).demos({}, 0)} == {"neg"}
    s = make_sampler("balanced", pool, 3, labels=["pos", "neg"])
    assert [d["output"] for d in s.demos({}, 0)] == ["pos", "neg", "pos"]
    assert s.demos(pool[0], 3) == s.demos(pool[1], 7)  # the same prefix for every query
    three = [{"input": str(i), "output": lab} for i, lab in enumerate("aaaabbc")]
    assert {d["output"] for d in make_sampler("balanced", three, 3, labels=["a", "b", "c"]).demos({}, 0)} == set("abc")


def test_bm25_returns_the_nearest_items_most_similar_last():
    s = make_sampler("bm25", POOL, 2)
    demos = s.demos({"input": "who won the tennis final", "output": "?"}, 0)
    assert demos[-1]["id"] == "train:5"
    demos = s.demos({"input": "train delays again, late train", "output": "?"}, 1)
    assert demos[-1]["id"] == "train:6"
    assert make_sampler("bm25", POOL, 0).demos({"input": "x"}, 0) == []


@pytest.mark.parametrize("name", ["first", "random", "balanced", "bm25"])
def test_k_larger_than_the_pool_is_a_clear_error(name):
    with pytest.raises(GenftError, match="9 shots asked for, but the few-shot pool has only 8 items"):
        make_sampler(name, POOL, 9)


def test_unknown_sampler_suggests_the_nearest():
    with pytest.raises(GenftError, match=r"unknown sampler 'balance' \(did you mean \"balanced\"\?\)"):
        make_sampler("balance", POOL, 2)


def test_demo_text_ignores_references_lists():
    pool = [{"question": "capital of peru", "output": "Lima", "references": ["Lima"], "id": "a"},
            {"question": "capital of chile", "output": "Santiago", "references": ["Santiago"], "id": "b"}]
    assert make_sampler("bm25", pool, 1).demos({"question": "peru capital"}, 0)[0]["id"] == "a"
