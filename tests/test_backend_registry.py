"""Evaluation backends (genft.evaluation.backends, lm-eval's LM interface): a toy backend
registered here (genft itself unedited) is chosen by name in an experiment config and in
`genft eval`, runs through `genft run`, is recorded in the stored cell's info and stays out of
every key; the base class deals work to processes in one place."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import genft
from genft import distributed
from genft.cli import main
from genft.errors import GenftError
from genft.evaluation import evaluate_cell
from genft.evaluation.backends import Backend, backend_names, register_backend, unregister_backend
from genft.evaluation.reference import ReferenceBackend
from genft.experiments.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

CALLS: Counter = Counter()


class Counting(ReferenceBackend):
    """The reference backend, counting the requests and items it serves."""

    name = "counting"

    def score_units(self, inputs, units, soft_prompt, on_items):
        CALLS["loglikelihood"] += 1
        CALLS["items"] += sum(map(len, units))
        return super().score_units(inputs, units, soft_prompt, on_items)

    def generate_units(self, inputs, units, max_new_tokens, soft_prompt, on_items):
        CALLS["generate_until"] += 1
        CALLS["items"] += sum(map(len, units))
        return super().generate_units(inputs, units, max_new_tokens, soft_prompt, on_items)


@pytest.fixture
def counting():
    register_backend(Counting)
    CALLS.clear()
    yield Counting
    unregister_backend(Counting.name)


GRID = {"name": "toy-backend", "train_tasks": ["tweet_sentiment"],
        "test": ["tweet_sentiment", "bbc_headline"], "shots": [0], "limit": 2}


def test_a_registered_backend_runs_through_genft_run(tmp_path, tiny_model, counting):
    config = {**GRID, "model": tiny_model}
    quiet = dict(progress=False, report=False, echo=lambda s: None, threads=1)
    genft.run({**config, "backend": "counting"}, tmp_path / "toy", **quiet)
    assert CALLS["loglikelihood"] == 1 and CALLS["generate_until"] == 1 and CALLS["items"] == 4
    genft.run(config, tmp_path / "fast", **quiet)  # the default backend
    toy, fast = Store(tmp_path / "toy" / "results.db"), Store(tmp_path / "fast" / "results.db")
    cells = {c["key"]: c for c in toy.cells()}
    assert {c["provenance"]["info"]["backend"] for c in cells.values()} == {"counting"}
    assert {c["provenance"]["info"]["backend"] for c in fast.cells()} == {"fast"}
    # backends must agree, so the backend is in no key and not in the config hash
    assert set(cells) == {c["key"] for c in fast.cells()} and len(cells) == 2
    assert {c["provenance"]["config_hash"] for c in cells.values()} == \
        {c["provenance"]["config_hash"] for c in fast.cells()}
    for a, b in zip(toy.items(), fast.items()):
        assert a["prediction"] == b["prediction"]
        if a["scores"] and "rouge_l" not in a["scores"]:
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_genft_eval_backend_option_and_the_reference_alias(tmp_path, tiny_model, counting):
    common = ["eval", "--model", tiny_model, "--tasks", "tweet_sentiment", "--shots", "0",
              "--formats", "prompt1", "--limit", "2", "--no-progress"]
    for argv, name in [(["--backend", "counting"], "counting"), (["--reference"], "reference"),
                       ([], "fast")]:
        out = tmp_path / name
        assert main([*common, *argv, "--out", str(out)]) == 0
        [record] = Store(out / "results.db").cells()
        assert record["provenance"]["info"]["backend"] == name
    assert CALLS["loglikelihood"] == 1


def test_an_unknown_backend_is_one_line(tmp_path, tiny_model, tasks, capsys):
    from genft.experiments.config import ExperimentConfig
    from genft.models import load_model

    with pytest.raises(Exception, match="unknown backend 'refrence'.*did you mean.*reference.*"
                                        "choose from fast, reference"):
        ExperimentConfig.model_validate({**GRID, "backend": "refrence"})
    with pytest.raises(GenftError, match="unknown backend 'vllm'; choose from fast, reference"):
        evaluate_cell(load_model(tiny_model), tasks.get("tweet_sentiment"), 0, "prompt1",
                      backend="vllm")
    with pytest.raises(SystemExit):
        main(["eval", "--tasks", "tweet_sentiment", "--backend", "vllm", "--out", str(tmp_path)])
    assert "invalid choice: 'vllm'" in capsys.readouterr().err
    with pytest.raises(GenftError, match="not a subclass"):
        register_backend(object)


class Constant(Backend):
    """A backend that needs no model: every continuation scores its negated length."""

    name = "constant"

    def score_units(self, inputs, units, soft_prompt, on_items):
        return {i: [-float(len(c)) for c in inputs.items[i].continuations] for u in units for i in u}

    def generate_units(self, inputs, units, max_new_tokens, soft_prompt, on_items):
        return {i: f"answer {i}" for u in units for i in u}


def test_the_base_class_deals_units_round_robin_and_gathers(monkeypatch, tiny, tasks):
    """Rank 1 of 2 computes every other unit; the gathered answer is complete, in item order."""
    from genft.evaluation.encoding import build_inputs

    inputs = build_inputs(tasks.get("bbc_headline"), tiny.tokenizer, 0, "prompt1", limit=5)
    computed = []

    class Recording(Constant):
        def generate_units(self, inputs, units, *args):
            computed.extend(i for u in units for i in u)
            return super().generate_units(inputs, units, *args)

    other_rank = {0: "answer 0", 2: "answer 2", 4: "answer 4"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "gather_objects", lambda mine: [other_rank, mine])
    answers = Recording(tiny).generate_until(inputs, 5)
    assert computed == [1, 3]
    assert answers == [f"answer {i}" for i in range(5)]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from genft.models import load_model

    return load_model(tiny_model)


def test_a_backend_needs_only_its_two_methods(tiny, tasks):
    register_backend(Constant)
    try:
        assert "constant" in backend_names()
        cell = evaluate_cell(tiny, tasks.get("bbc_topic"), 0, "prompt1", limit=3,
                             backend="constant", progress=False)
        # a label scores minus its token count: the first of the shortest labels wins
        lengths = {w: len(tiny.tokenizer(" " + w)["input_ids"]) for w in tasks.get("bbc_topic").labels}
        assert {it["prediction"] for it in cell.items} == {min(lengths, key=lengths.get)}
        assert cell.info["backend"] == "constant"
    finally:
        unregister_backend("constant")
