"""Training inputs: answer-only loss, FTICL demos without loss, the fast loss against transformers'."""

from __future__ import annotations

import pytest
import torch

from genft.errors import GenftError
from genft.tasks.prompts import TERMINATOR
from genft.training.data import build_examples, collate, micro_batches, train_pool
from genft.training.methods import PromptedLM


def test_loss_only_on_answer_and_terminator(smol, tasks):
    task = tasks.get("tweet_sentiment")
    pool = train_pool(task, 6)
    examples = build_examples([task], smol.tokenizer, [pool], [0], 512, seed=0)
    for ex, rec in zip(examples, pool):
        assert ex.prompt == task.render(rec, "prompt1")
        target = smol.tokenizer.decode(ex.input_ids[ex.loss_start:])
        assert target == " " + rec["output"] + TERMINATOR  # the model learns to stop
        assert smol.tokenizer.decode(ex.input_ids[:ex.loss_start]) == ex.prompt


def test_fticl_inputs_hold_k_demos_from_train_pool_with_no_loss(smol, tasks):
    task = tasks.get("tweet_sentiment")
    pool = train_pool(task, 40)
    k = 4
    examples = build_examples([task], smol.tokenizer, [pool], [k], 2048, seed=3)
    pool_prompts = {task.render(r, "prompt1"): r for r in pool}
    for ex, rec in zip(examples, pool):
        blocks = ex.prompt.split(TERMINATOR)
        assert len(blocks) == k + 1 and ex.n_demos == k
        demo_prompts = [b.rsplit(" ", 1)[0] for b in blocks[:-1]]
        demos = [pool_prompts[p] for p in demo_prompts]  # KeyError = not from the training pool
        assert all(d["id"] != rec["id"] for d in demos)  # never the item itself
        assert {d["output"] for d in demos} == set(task.labels)  # every label present
        assert ex.prompt == task.prompt(rec, demos, "prompt1")
        # no loss on the demos: loss starts after the whole k-shot prompt
        assert smol.tokenizer.decode(ex.input_ids[ex.loss_start:]) == " " + rec["output"] + TERMINATOR
    with pytest.raises(GenftError, match="training pool has only"):
        build_examples([task], smol.tokenizer, [pool[:3]], [3], 512, seed=0)


def test_target_terminator_tokenizes_as_in_a_kshot_prompt(smol, tasks):
    """The learned end of an answer is the token sequence demos carry, not the end-of-string
    merge: trained on SmolLM2's one-token "\\n\\n" (1116), FTICL answered unfamiliar tasks
    with nothing; inside k-shot prompts that blank line is two "\\n" tokens."""
    tok = smol.tokenizer
    newline, = tok("\n").input_ids
    for task_name, k in [("tweet_sentiment", 0), ("tweet_sentiment", 2), ("bbc_headline", 1)]:
        task = tasks.get(task_name)
        pool = train_pool(task, 40)[:8] if k == 0 else train_pool(task, 40)
        for ex, rec in zip(build_examples([task], tok, [pool], [k], 4096, seed=0)[:8], pool):
            text = tok.decode(ex.input_ids)
            assert text == ex.prompt + " " + rec["output"] + TERMINATOR
            # as a demo followed by the next block, the same text has the same tokens
            as_demo = tok(text + ex.prompt).input_ids
            assert as_demo[:len(ex.input_ids)] == ex.input_ids
            assert ex.input_ids[-2:] == [newline, newline]


def test_default_fticl_shots_per_task(tasks):
    from genft.training.config import TrainConfig
    from genft.training.methods import stages

    cfg = TrainConfig(tasks=["tweet_sentiment"], method="fticl", steps=1, out="x")
    (stage,) = stages(cfg, [tasks.get("tweet_sentiment")])
    assert stage.shots == [tasks.get("tweet_sentiment").spec.fticl_shots]
    cfg = TrainConfig(tasks=["tweet_sentiment"], method="fticl", steps=1, out="x", shots=5)
    assert stages(cfg, [tasks.get("tweet_sentiment")])[0].shots == [5]


def test_fast_loss_equals_transformers_loss(smol, tasks):
    """The LM head at loss positions only, right padding, no mask == the plain HF loss."""
    task = tasks.get("tweet_sentiment")
    examples = build_examples([task], smol.tokenizer, [train_pool(task, 4)], [0], 512, 0)
    batch = collate(examples, smol.tokenizer.pad_token_id)
    with torch.no_grad():
        fast = PromptedLM(smol.model)(**batch) / len(batch["loss_targets"])
        total, count = 0.0, 0
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            labels = ids.clone()
            labels[0, :ex.loss_start] = -100
            n = len(ex.input_ids) - ex.loss_start
            total += smol.model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    assert fast.item() == pytest.approx(total / count, rel=1e-4)


def test_batches_cover_every_example_once_and_are_reproducible():
    from genft.training.data import Example

    examples = [Example(list(range(n % 37 + 2)), 1, 0, "") for n in range(300)]
    a = micro_batches(examples, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(300))
    assert a == micro_batches(examples, 8, seed=1, epoch=0)
    assert a != micro_batches(examples, 8, seed=1, epoch=1)
    # length-sorted within chunks: padding is far below that of a random order
    pad = sum(max(len(examples[i].input_ids) for i in b) * len(b) for b in a)
    assert pad < 1.2 * sum(len(e.input_ids) for e in examples)


def test_train_size_draw_is_nested_and_label_mixed(tasks):
    task = tasks.get("tweet_sentiment")
    small, large = train_pool(task, 200), train_pool(task, 400)
    assert large[:200] == small
    assert 0.08 < sum(r["output"] == "positive" for r in small) / 200 < 0.35  # pool is ~17% positive
    with pytest.raises(GenftError, match="more than task"):
        train_pool(task, 10**6)
