"""The fast path (prefix KV cache, batching, left padding, row merging) against the plain reference:
identical predictions, log-probs within 1e-4 — for several tasks, shots, both formats, both scorings,
generation, a soft prompt and a LoRA adapter."""

from __future__ import annotations

import json

import pytest
import torch

from genft.evaluation import CellResult, evaluate_cell
from genft.models import LoadedModel
from genft.tasks.task import load_task_file

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same(fast: CellResult, ref: CellResult) -> None:
    assert fast.n == ref.n > 0
    assert [i["id"] for i in fast.items] == [i["id"] for i in ref.items]
    assert [i["prompt_hash"] for i in fast.items] == [i["prompt_hash"] for i in ref.items]
    assert [i["prediction"] for i in fast.items] == [i["prediction"] for i in ref.items]
    for a, b in zip(fast.items, ref.items):
        if "scores" in a:
            assert a["scores"].keys() == b["scores"].keys()
            for label in a["scores"]:
                assert abs(a["scores"][label] - b["scores"][label]) < TOL, (a, b)
    assert fast.metrics == pytest.approx(ref.metrics)


def both(loaded, task, shots, fmt, **kw):
    fast = evaluate_cell(loaded, task, shots, fmt, progress=False, **kw)
    ref = evaluate_cell(loaded, task, shots, fmt, progress=False, backend="reference", **kw)
    return fast, ref


@pytest.mark.parametrize("name,shots,fmt,limit,batch", [
    ("tweet_sentiment", 4, "prompt1", 3, 2),   # 4-shot prefix cache, uneven last batch
    ("tweet_sentiment", 0, "prompt2", 4, 8),   # almost no shared prefix
    ("bbc_topic", 0, "prompt1", 3, 8),          # five labels
    pytest.param("tweet_sentiment", 4, "prompt1", 12, 5, marks=pytest.mark.slow),
    pytest.param("tweet_sentiment", 6, "prompt2", 8, 3, marks=pytest.mark.slow),
    pytest.param("tweet_sentiment", 2, "prompt2", 8, 4, marks=pytest.mark.slow),
    pytest.param("bbc_topic", 1, "prompt2", 6, 8, marks=pytest.mark.slow),
])
def test_classification_matches_reference(smol, tasks, name, shots, fmt, limit, batch):
    fast, ref = both(smol, tasks.get(name), shots, fmt, limit=limit, batch_size=batch)
    assert_same(fast, ref)
    assert fast.info["prefix_tokens"] > (50 if shots else 0)  # the demos really were cached
    assert set(fast.metrics) == {"accuracy", "f1"}


def test_first_token_scoring_matches_reference(smol, tasks):
    fast, ref = both(smol, tasks.get("tweet_sentiment"), 2, "prompt1", limit=3, batch_size=2,
                     scoring="first-token")
    assert_same(fast, ref)
    assert fast.scoring == "first-token"


@pytest.mark.parametrize("shots,fmt,limit", [
    (1, "prompt1", 2), (0, "prompt2", 2),
    pytest.param(2, "prompt2", 8, marks=pytest.mark.slow),
    pytest.param(4, "prompt1", 6, marks=pytest.mark.slow),
])
def test_generation_matches_reference(smol, tasks, shots, fmt, limit):
    fast, ref = both(smol, tasks.get("bbc_headline"), shots, fmt, limit=limit, batch_size=2)
    assert_same(fast, ref)
    assert all("\n\n" not in i["prediction"] for i in fast.items)
    assert set(fast.metrics) == {"rouge_l", "bleu"}
    assert fast.scoring == "greedy"


def test_multi_token_labels_share_rows(smol, tmp_path):
    """Labels of several tokens, one a prefix of another (" good" / " good enough"): rows merge."""
    rows = [{"text": t, "label": lab} for t, lab in [
        ("I loved it", "good"), ("meh, fine I guess", "good enough"), ("awful", "so so"),
        ("great stuff", "good"), ("not bad", "good enough"), ("horrible", "so so")]]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 2))
    (tmp_path / "t.yaml").write_text(
        "name: multi\nfamily: toy\ntype: classification\n"
        "source: {kind: local, path: data.jsonl}\nfields: {input: text}\n"
        "label: {column: label, words: [good, good enough, so so]}\nmetrics: [accuracy, f1]\n"
        'prompt1: "Review: {{ input }}\\nVerdict:"\nprompt2: "{{ input }} =>"\n'
        "splits: {test: {size: 4}, fewshot: {size: 6}}\n")
    task = load_task_file(tmp_path / "t.yaml")
    fast, ref = both(smol, task, 2, "prompt1", batch_size=3)
    assert_same(fast, ref)
    from genft.evaluation.encoding import build_inputs
    from genft.evaluation.fast import item_rows

    inputs = build_inputs(task, smol.tokenizer, 2, "prompt1")
    conts = inputs.items[0].continuations
    assert len(conts[1]) > 1 and conts[1][: len(conts[0])] == conts[0] and len(conts[2]) > 1
    rows = item_rows(0, inputs.items[0], inputs.prefix_len)
    assert len(rows) == 2  # " good" is read off the " good enough" row
    assert sorted(len(r.reads) for r in rows) == [1, 2]


def test_soft_prompt_only_for_its_task(smol, tasks):
    """A soft prompt shifts every position by its length; scores must still match the reference,
    and it must not touch other tasks."""
    torch.manual_seed(0)
    soft = torch.randn(7, smol.model.config.hidden_size) * 0.02
    promot = LoadedModel(smol.model, smol.tokenizer, name="promot-toy", base_model=smol.name,
                         method="promot", tasks=["tweet_sentiment"],
                         soft_prompts={"tweet_sentiment": soft})
    sentiment = tasks.get("tweet_sentiment")
    fast, ref = both(promot, sentiment, 2, "prompt1", limit=3, batch_size=2)
    assert_same(fast, ref)
    assert fast.info["soft_prompt"]
    plain = evaluate_cell(smol, sentiment, 2, "prompt1", limit=3, batch_size=2, progress=False)
    assert any(abs(a["scores"]["positive"] - b["scores"]["positive"]) > 1e-2
               for a, b in zip(fast.items, plain.items))
    other = evaluate_cell(promot, tasks.get("bbc_topic"), 0, "prompt1", limit=3, progress=False)
    base = evaluate_cell(smol, tasks.get("bbc_topic"), 0, "prompt1", limit=3, progress=False)
    assert not other.info["soft_prompt"]
    assert [i["scores"] for i in other.items] == [i["scores"] for i in base.items]


def test_soft_prompt_generation_matches_reference(smol, tasks):
    torch.manual_seed(1)
    soft = torch.randn(5, smol.model.config.hidden_size) * 0.02
    promot = LoadedModel(smol.model, smol.tokenizer, name="promot-toy", base_model=smol.name,
                         soft_prompts={"bbc_headline": soft})
    fast, ref = both(promot, tasks.get("bbc_headline"), 0, "prompt1", limit=2, batch_size=2)
    assert_same(fast, ref)


def test_lora_adapter_matches_reference(smol_copy, tasks):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(smol_copy.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False)).eval()
    lora = LoadedModel(model, smol_copy.tokenizer, name="lora-toy", base_model="smollm2-135m",
                       method="lora")
    fast, ref = both(lora, tasks.get("tweet_sentiment"), 1, "prompt2", limit=3, batch_size=2)
    assert_same(fast, ref)


def test_auto_batch_size_same_predictions(smol, tasks):
    task = tasks.get("tweet_sentiment")
    auto = evaluate_cell(smol, task, 2, "prompt1", limit=6, batch_size="auto", progress=False)
    fixed = evaluate_cell(smol, task, 2, "prompt1", limit=6, batch_size=1, progress=False)
    assert auto.info["batch_size"] >= 1
    assert [i["prediction"] for i in auto.items] == [i["prediction"] for i in fixed.items]
    record = auto.to_record()
    assert "items" not in record and json.loads(json.dumps(record))["n"] == 6


def _generate(smol, task, shots, limit, batch, monkeypatch=None):
    """The fast generation loop on its own: new tokens per item and the number of forward passes."""
    from genft.evaluation import fast
    from genft.evaluation.encoding import build_inputs

    inputs = build_inputs(task, smol.tokenizer, shots, "prompt1", limit=limit)
    batches = fast.plan_batches(inputs, batch, "generation")
    prefix = fast.PrefixCache(smol.model, inputs.items[0].context[: inputs.prefix_len], None)
    calls = []
    hook = smol.model.register_forward_hook(lambda module, args, kwargs: calls.append(1))
    try:
        out = fast.generate_batches(smol.model, smol.tokenizer, batches, prefix,
                                    task.spec.max_new_tokens)
    finally:
        hook.remove()
    return inputs, batches, out, len(calls)


def test_continuous_batching_matches_reference(smol, tasks):
    """Rows stop at different steps and waiting rows take their slots mid-way (caches joined,
    padding masked): every item's tokens equal the reference's, in fewer forward passes than
    running each planned batch to its longest answer."""
    from genft.evaluation.reference import generate_item

    task = tasks.get("bbc_headline")
    inputs, batches, out, forwards = _generate(smol, task, 1, 5, 2)
    ref = {i: generate_item(smol.model, smol.tokenizer, it, None, task.spec.max_new_tokens)
           for i, it in enumerate(inputs.items)}
    assert out == ref
    lengths = [len(t) for t in ref.values()]
    assert len(set(lengths)) > 1  # answers really do stop at different steps
    per_batch = sum(max(len(ref[r.item]) for r in b) for b in batches)  # static batching's passes
    assert forwards < per_batch


def test_unjoinable_cache_falls_back_to_whole_batches(smol, tasks, monkeypatch):
    from genft.evaluation import fast

    task = tasks.get("bbc_headline")
    _, _, joined, joined_forwards = _generate(smol, task, 1, 5, 2)
    monkeypatch.setattr(fast, "_mergeable", lambda cache: False)
    _, batches, whole, forwards = _generate(smol, task, 1, 5, 2)
    assert whole == joined
    assert forwards == sum(max(len(whole[r.item]) for r in b) for b in batches) > joined_forwards
