"""Small pieces of the evaluation engine: prefix finding, row merging, batch planning, metrics."""

from __future__ import annotations

import pytest

from genft.evaluation import metrics
from genft.evaluation.encoding import CellInputs, Item, build_inputs, shared_prefix_len
from genft.evaluation.fast import item_rows, plan_batches
from genft.evaluation.scoring import get_scoring


def test_shared_prefix_leaves_one_token_per_context():
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts: keep the last token out
    assert shared_prefix_len([[1, 2], [3, 4]]) == 0
    assert shared_prefix_len([]) == 0


def test_prefix_is_found_on_full_prompt_tokens(smol, tasks):
    """The trap: the k-shot prefix text tokenized alone ends in a lone "\\n\\n" token that the full
    prompts do not contain. The cached prefix must be a prefix of every full prompt's tokens."""
    task = tasks.get("tweet_sentiment")
    inputs = build_inputs(task, smol.tokenizer, 4, "prompt1", limit=5)
    prefix = inputs.items[0].context[: inputs.prefix_len]
    assert all(it.context[: inputs.prefix_len] == prefix for it in inputs.items)
    demos = task.prompt(task.records("test")[0], task.records("fewshot")[:4], "prompt1")
    demo_text = demos[: demos.rindex("\n\n") + 2]
    alone = smol.tokenizer(demo_text)["input_ids"]
    assert alone != inputs.items[0].context[: len(alone)]  # naive caching would be wrong here
    assert inputs.prefix_len >= len(alone) - 1


def test_continuation_is_label_word_after_separator(smol, tasks):
    inputs = build_inputs(tasks.get("tweet_sentiment"), smol.tokenizer, 0, "prompt1", limit=2)
    tok = smol.tokenizer
    assert inputs.items[0].continuations == [tok(" negative")["input_ids"], tok(" positive")["input_ids"]]
    assert inputs.items[0].prompt.endswith("### Sentiment:")


def _item(ctx, conts):
    return Item("x", "p", "g", ctx, conts)


def test_rows_merge_when_one_feed_prefixes_another():
    one_token = item_rows(0, _item([1, 2, 3], [[7], [8], [9]]), 1)
    assert len(one_token) == 1 and one_token[0].tokens == [2, 3]
    assert sorted(r[0] for r in one_token[0].reads) == [0, 1, 2]
    nested = item_rows(0, _item([1, 2, 3], [[7], [7, 8], [9, 5]]), 1)
    assert sorted(map(len, (r.tokens for r in nested))) == [3, 3]  # [2,3,7] carries labels 0 and 1
    only_first = get_scoring("first-token").select(CellInputs([_item([1, 2, 3], [[7, 1], [9, 5]])],
                                                              ["a", "b"], 1))
    first = item_rows(0, only_first.items[0], 1)
    assert len(first) == 1 and all(len(cont) == 1 for _, _, cont in first[0].reads)


def test_plan_batches_limits_rows_and_keeps_items_whole():
    items = [_item([1] * n + [2], [[7], [7, 8], [9, 5]]) for n in (3, 9, 5, 1, 7)]
    inputs = CellInputs(items, ["a", "b", "c"], 1)
    batches = plan_batches(inputs, 4, "classification")
    assert all(len(b) <= 4 for b in batches)
    for b in batches:
        for it in {r.item for r in b}:
            assert sum(r.item == it for r in b) == 2  # both rows of an item in the same batch
    assert [r.item for b in batches for r in b][::2] == [1, 4, 2, 0, 3]  # longest first
    gen = plan_batches(inputs, 2, "generation")
    assert [len(b) for b in gen] == [2, 2, 1]


def test_classification_metrics():
    preds, golds = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert metrics.accuracy(preds, golds) == 0.75
    assert metrics.macro_f1(preds, golds, ["a", "b", "c"]) == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_generation_metrics():
    assert metrics.rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    assert metrics.rouge_l(["a b"], ["c d"]) == 0.0
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert metrics.exact_match(["The Cat!"], ["cat"]) == 1.0
    assert metrics.token_f1(["red cat"], ["the red dog"]) == pytest.approx(0.5)
    values = metrics.compute(["rouge_l", "bleu", "exact_match", "token_f1"], ["x"], ["y"])
    assert set(values) == {"rouge_l", "bleu", "exact_match", "token_f1"}
    assert all(0.0 <= v <= 1.0 for v in values.values())
