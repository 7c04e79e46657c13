"""Scoring rules: each defined once, in genft.evaluation.scoring. A toy rule registered here
(genft itself unedited) runs through `genft run` and `genft eval`; the length normalizations
are what a plain hand computation gives and change the winner when label lengths differ;
every backend agrees under every rule; the label-word check asks the rule what it scores."""

from __future__ import annotations

import json

import pytest
import torch

import genft
from genft.cli import main
from genft.errors import GenftError
from genft.evaluation import evaluate_cell
from genft.evaluation.scoring import Scoring, register_scoring, scoring_names, unregister_scoring
from genft.experiments.store import Store
from genft.tasks.task import load_task_file

pytestmark = pytest.mark.usefixtures("one_thread")

BUILTIN = ("loglik", "first-token", "loglik-per-token", "loglik-per-byte")
TEXTS = ["the cat sat", "rain again today", "stocks fell sharply", "a quiet evening",
         "new phone launched", "team wins final", "bridge closed for repairs", "prices keep rising"]


def length_task(tmp_path, words=("a", "internationalization")):
    """A task whose label words differ in length: " a" is 1 token and 2 bytes,
    " internationalization" 2 tokens and 21 bytes (SmolLM2's tokenizer)."""
    rows = [{"text": t, "label": words[i % len(words)]} for i, t in enumerate(TEXTS)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 2))
    (tmp_path / "t.yaml").write_text(
        "name: lengths\nfamily: toy\ntype: classification\n"
        "source: {kind: local, path: data.jsonl}\nfields: {input: text}\n"
        f"label: {{column: label, words: [{', '.join(words)}]}}\nmetrics: [accuracy]\n"
        'prompt1: "Text: {{ input }}\\nAnswer:"\nprompt2: "{{ input }} =>"\n'
        "splits: {test: {size: 8}, fewshot: {size: 8}}\n")
    return load_task_file(tmp_path / "t.yaml")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from genft.models import load_model

    return load_model(tiny_model)


def hand_loglik(loaded, prompt: str, word: str) -> tuple[float, int]:
    """The plain computation: the whole sequence through the model, the log-probs of the tokens
    that follow the prompt's tokens summed; and how many tokens those are."""
    tok, model = loaded.tokenizer, loaded.model
    context = tok(prompt)["input_ids"]
    whole = tok(prompt + " " + word)["input_ids"]
    assert whole[: len(context)] == context
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logprobs[p - 1, whole[p]].item() for p in range(len(context), len(whole))), \
        len(whole) - len(context)


def test_length_normalizations_are_the_hand_computation_and_change_the_winner(tmp_path, tiny):
    task = length_task(tmp_path)
    words = list(task.labels)
    results = {s: evaluate_cell(tiny, task, 0, "prompt1", scoring=s, progress=False)
               for s in ("loglik", "loglik-per-token", "loglik-per-byte")}
    predictions = {s: [it["prediction"] for it in r.items] for s, r in results.items()}
    for i, item in enumerate(results["loglik"].items):
        prompt = task.prompt(task.records("test")[i], [], "prompt1")
        hand = {w: hand_loglik(tiny, prompt, w) for w in words}
        expected = {
            "loglik": {w: lp for w, (lp, n) in hand.items()},
            "loglik-per-token": {w: lp / n for w, (lp, n) in hand.items()},
            "loglik-per-byte": {w: lp / len((" " + w).encode("utf-8")) for w, (lp, n) in hand.items()},
        }
        for scoring, values in expected.items():
            got = results[scoring].items[i]
            assert got["scores"] == pytest.approx(values, abs=1e-4), (scoring, i)
            assert got["prediction"] == max(words, key=lambda w: values[w])
        assert hand["internationalization"][1] == 2 and hand["a"][1] == 1
    # the plain sum always prefers the 1-token word; per byte always the long one; per token
    # sometimes: the normalizations change the winner, differently
    assert set(predictions["loglik"]) == {"a"}
    assert set(predictions["loglik-per-byte"]) == {"internationalization"}
    assert set(predictions["loglik-per-token"]) == {"a", "internationalization"}
    assert results["loglik-per-byte"].scoring == "loglik-per-byte"


@pytest.mark.parametrize("scoring", BUILTIN)
def test_fast_backend_equals_reference_for_every_scoring(tmp_path, tiny, scoring):
    """Labels of different token counts, 2-shot prefix cache, an uneven last batch."""
    task = length_task(tmp_path, ("good", "bad enough", "internationalization"))
    fast = evaluate_cell(tiny, task, 2, "prompt1", scoring=scoring, batch_size=3, progress=False)
    ref = evaluate_cell(tiny, task, 2, "prompt1", scoring=scoring, backend="reference",
                        progress=False)
    assert fast.info["backend"] == "fast" and ref.info["backend"] == "reference"
    assert fast.scoring == ref.scoring == scoring and fast.n == ref.n == 8
    assert [i["prediction"] for i in fast.items] == [i["prediction"] for i in ref.items]
    for a, b in zip(fast.items, ref.items):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
    assert fast.info["prefix_tokens"] > 10


@pytest.fixture
def per_char():
    """lm-eval's acc_norm (the sum per character of the continuation): one registration call."""
    rule = register_scoring(Scoring("loglik-per-char", lambda lp, tokens, text: lp / len(text),
                                    description="the sum per character (lm-eval acc_norm)"))
    yield rule
    unregister_scoring(rule.name)


GRID = {"name": "toy-scoring", "train_tasks": ["tweet_sentiment"], "test": ["tweet_sentiment"],
        "shots": [0], "limit": 3}


def test_a_registered_scoring_runs_through_genft_run(tmp_path, tiny_model, per_char):
    out = tmp_path / "out"
    config = {**GRID, "model": tiny_model, "scoring": "loglik-per-char"}
    genft.run(config, out, progress=False, report=False, echo=lambda s: None, threads=1)
    genft.run({**config, "scoring": "loglik"}, out, progress=False, report=False,
              echo=lambda s: None, threads=1)
    store = Store(out / "results.db")
    cells = {c["scoring"]: c for c in store.cells()}
    assert set(cells) == {"loglik-per-char", "loglik"}  # the rule's name is in the key
    toy, plain = (store.items(cells[s]["key"]) for s in ("loglik-per-char", "loglik"))
    assert len(toy) == len(plain) == 3
    for a, b in zip(toy, plain):
        assert a["scores"] == pytest.approx({w: v / len(" " + w) for w, v in b["scores"].items()})
        assert a["prediction"] == max(a["scores"], key=a["scores"].get)


def test_genft_eval_and_the_api_accept_a_registered_scoring(tmp_path, tiny_model, tiny, tasks,
                                                          per_char):
    assert main(["eval", "--model", tiny_model, "--tasks", "tweet_sentiment", "--shots", "0",
                 "--formats", "prompt1", "--limit", "2", "--scoring", "loglik-per-char",
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    [record] = Store(tmp_path / "e" / "results.db").cells()
    assert record["scoring"] == "loglik-per-char"
    cell = genft.evaluate(tiny, "tweet_sentiment", 0, limit=2, scoring="loglik-per-char",
                          progress=False)
    assert cell.scoring == "loglik-per-char" and cell.n == 2


def test_an_unknown_scoring_names_the_registered_ones(tmp_path, tiny, tasks, per_char, capsys):
    from genft.experiments.config import ExperimentConfig

    with pytest.raises(Exception, match="unknown scoring 'loglik-per-chr'.*did you mean.*"
                                        "loglik-per-char.*choose from loglik, first-token"):
        ExperimentConfig.model_validate({**GRID, "scoring": "loglik-per-chr"})
    with pytest.raises(GenftError, match="unknown scoring 'sum'; choose from .*loglik-per-byte"):
        evaluate_cell(tiny, tasks.get("tweet_sentiment"), 0, "prompt1", scoring="sum")
    with pytest.raises(SystemExit):
        main(["eval", "--tasks", "tweet_sentiment", "--scoring", "sum", "--out", str(tmp_path)])
    assert "invalid choice: 'sum'" in capsys.readouterr().err
    assert set(BUILTIN) <= set(scoring_names())
    with pytest.raises(GenftError, match="already registered"):
        register_scoring(Scoring("loglik", lambda lp, tokens, text: lp))


def test_the_label_check_asks_the_scoring_which_tokens_it_scores(tmp_path):
    """" not_entailment" and " not_sure" share their first two tokens (" not", "_") with
    SmolLM2's tokenizer: a rule scoring two tokens refuses them, one scoring all accepts."""
    from genft.models import DEFAULT_MODEL, load_tokenizer
    from genft.tasks.labels import check_label_tokens, label_token_ids

    tok = load_tokenizer(DEFAULT_MODEL)
    words = ["not_entailment", "not_sure"]
    ids = label_token_ids(tok, words)
    assert ids[0][:2] == ids[1][:2] and ids[0][2] != ids[1][2]
    two = register_scoring(Scoring("first-two", lambda lp, tokens, text: lp, max_tokens=2))
    try:
        with pytest.raises(GenftError, match=r"start with the same 2 tokens \[441, 79\], so "
                                             r"first-two scoring cannot tell them apart"):
            check_label_tokens(words, ids, "first-two")
        for name in ("loglik", "loglik-per-token", "loglik-per-byte"):
            check_label_tokens(words, ids, name)
        with pytest.raises(GenftError, match="first-token scoring cannot tell them apart"):
            check_label_tokens(words, ids, "first-token")
    finally:
        unregister_scoring(two.name)
