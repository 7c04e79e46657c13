"""The bad-input matrix of docs/errors.md, evaluation and training: very long inputs
(row 16), label words the tokenizer cannot tell apart (row 17), an --out that cannot be
written (row 28, the `genft eval` / `genft train` half), a --max-length beyond the model's
window.

The long-input tests use a tiny random GPT-2 with 64 learned positions: a context longer
than that is an IndexError inside the model, so "it runs" means the truncation happened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_errors_tasks import error_line, make_task
from test_train_cli import TINY_ARGS

from genft.errors import GenftError
from genft.experiments.store import Store
from genft.evaluation import evaluate_cell
from genft.evaluation.encoding import build_inputs, context_window
from genft.models import DEFAULT_MODEL, load_model, resolve
from genft.tasks.task import load_task_file

WINDOW = 64
LONG = "word " * 5000  # ~5,000 tokens

GEN_TASK = """\
name: longgen
family: summarization
type: generation
source:
  kind: local
  path: data.jsonl
fields:
  input: text
output: title
metrics: [rouge_l]
prompt1: "### Input:\\n{{ input }}\\n### Summary:"
prompt2: "Text: {{ input }}\\nSummary:"
max_new_tokens: MAX_NEW
splits:
  test: {size: 4}
  fewshot: {size: 4}
"""


@pytest.fixture(scope="module")
def gpt2_64_dir(tmp_path_factory) -> str:
    """A random one-layer GPT-2 with 64 positions and SmolLM2's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from genft.models import load_tokenizer

    folder = tmp_path_factory.mktemp("gpt2-64")
    tok = load_tokenizer(DEFAULT_MODEL)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                               n_positions=WINDOW, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(resolve(DEFAULT_MODEL)) / name, folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_64(gpt2_64_dir):
    return load_model(gpt2_64_dir)


def _rows(long_at=(0, 3)):
    # each long text distinct: splits are disjoint by text, so a repeat would leave its role
    return [{"text": f"long {i} {LONG}" if i in long_at else f"text {i}", "label": ["negative", "positive"][i % 2],
             "title": f"title {i}"} for i in range(8)]


@pytest.fixture(scope="module")
def long_cls(tmp_path_factory):
    """A classification task with one ~5,000-token query in its test split and one
    ~5,000-token example in its few-shot pool (the third demo)."""
    task = load_task_file(make_task(tmp_path_factory.mktemp("cls"), rows=_rows()) / "task.yaml")
    assert [len(r["input"]) > 1000 for r in task.records("test")].count(True) == 1
    assert [len(r["input"]) > 1000 for r in task.records("fewshot")] == [False, False, True, False]
    return task


def _gen_task(folder: Path, max_new: int):
    return load_task_file(make_task(folder, yaml_text=GEN_TASK.replace("MAX_NEW", str(max_new)),
                                    rows=_rows()) / "task.yaml")


def _agree(fast, ref):
    assert [i["prediction"] for i in fast.items] == [i["prediction"] for i in ref.items]
    for a, b in zip(fast.items, ref.items):
        for label, score in a.get("scores", {}).items():
            assert abs(score - b["scores"][label]) < 1e-4


# ---------------------------------------------------------------- row 16: very long inputs


def test_long_query_is_cut_from_the_left_and_counted(gpt2_64, long_cls):
    fast = evaluate_cell(gpt2_64, long_cls, 0, "prompt1", progress=False)
    ref = evaluate_cell(gpt2_64, long_cls, 0, "prompt1", progress=False, backend="reference")
    assert fast.info["truncated"] == ref.info["truncated"] == 1 and fast.n == 4
    _agree(fast, ref)

    tok = gpt2_64.tokenizer
    whole = build_inputs(long_cls, tok, 0, "prompt1")
    cut = build_inputs(long_cls, tok, 0, "prompt1", window=context_window(gpt2_64.model))
    room = max(len(c) for it in cut.items for c in it.continuations)
    for w, c in zip(whole.items, cut.items):
        assert c.continuations == w.continuations  # the answer is never cut
        assert len(c.context) + room <= WINDOW
        assert c.context == w.context[-len(c.context):]  # the last tokens are kept
        assert c.truncated == len(w.context) - len(c.context)
        assert tok.decode(c.context).endswith("word \n### Sentiment:" if c.truncated else ":")
    assert [c.truncated > 0 for c in cut.items] == [len(r["input"]) > 1000
                                                   for r in long_cls.records("test")]


def test_k_shot_prompts_lose_their_oldest_demos_first(gpt2_64, long_cls):
    """With 3 shots the long demo is in every prompt: all 4 items are cut, each keeps its own
    query, and the shared prefix is found on the cut contexts (fast == reference)."""
    fast = evaluate_cell(gpt2_64, long_cls, 3, "prompt1", progress=False)
    ref = evaluate_cell(gpt2_64, long_cls, 3, "prompt1", progress=False, backend="reference")
    assert fast.info["truncated"] == 4
    _agree(fast, ref)
    cut = build_inputs(long_cls, gpt2_64.tokenizer, 3, "prompt1", window=WINDOW)
    for item, record in zip(cut.items, long_cls.records("test")):
        text = gpt2_64.tokenizer.decode(item.context)
        assert "### Input:" not in text.split("\n\n")[0]  # the first demos are gone
        if len(record["input"]) < 100:
            assert text.endswith(f"### Input:\n{record['input']}\n### Sentiment:")


def test_generation_keeps_room_for_max_new_tokens(gpt2_64, tmp_path):
    task = _gen_task(tmp_path, max_new=8)
    fast = evaluate_cell(gpt2_64, task, 0, "prompt1", progress=False)
    ref = evaluate_cell(gpt2_64, task, 0, "prompt1", progress=False, backend="reference")
    assert fast.info["truncated"] == ref.info["truncated"] == 1
    _agree(fast, ref)
    cut = build_inputs(task, gpt2_64.tokenizer, 0, "prompt1", window=WINDOW)
    assert max(len(it.context) for it in cut.items) == WINDOW - 8


def test_window_with_no_room_for_the_prompt_is_one_line(gpt2_64, tmp_path):
    task = _gen_task(tmp_path, max_new=WINDOW)
    with pytest.raises(GenftError) as e:
        evaluate_cell(gpt2_64, task, 0, "prompt1", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "the model's window (64 positions) leaves no room for a prompt " \
                                "after max_new_tokens (64)" in msg


def test_soft_prompt_takes_its_positions_from_the_window(gpt2_64):
    assert context_window(gpt2_64.model) == WINDOW
    assert context_window(gpt2_64.model, torch.zeros(10, 16)) == WINDOW - 10


# ---------------------------------------------------------------- row 17: label words


@pytest.fixture(scope="module")
def uncased_model(tmp_path_factory):
    """A tiny Llama whose tokenizer lower-cases: 'Positive' and 'positive' are one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("uncased")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "positive": 1, "negative": 2, "</s>": 3},
                                     unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(folder)
    LlamaForCausalLM(LlamaConfig(vocab_size=4, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def cased_words_task(tmp_path):
    rows = [{"text": f"t{i}", "label": ["Positive", "positive"][i % 2]} for i in range(12)]
    return make_task(tmp_path / "task", words="Positive, positive", rows=rows,
                     replace=("  fewshot: {size: 4}\n", "  fewshot: {size: 4}\n  train: {}\n"))


SAME_TOKENS = "label words 'Positive' and 'positive' tokenize to the same tokens [1]"


def test_eval_refuses_label_words_the_tokenizer_cannot_tell_apart(capsys, tmp_path, uncased_model,
                                                                  cased_words_task):
    out = tmp_path / "out"
    line = error_line(capsys, "eval", "--model", uncased_model, "--tasks", "mytask", "--include",
                      str(cased_words_task), "--shots", "0", "--out", str(out), "--no-progress")
    assert f"task 'mytask' ({cased_words_task / 'task.yaml'}): {SAME_TOKENS}" in line
    assert not (out / "results.db").exists() or Store(out / "results.db").cell_keys() == set()


def test_train_refuses_label_words_the_tokenizer_cannot_tell_apart(capsys, tmp_path, uncased_model,
                                                                   cased_words_task):
    out = tmp_path / "out"
    line = error_line(capsys, "train", "--model", uncased_model, "--tasks", "mytask", "--include",
                      str(cased_words_task), "--steps", "1", "--out", str(out), "--no-progress")
    assert SAME_TOKENS in line
    assert not out.exists()  # refused before the run claims its folder


# ---------------------------------------------------------------- row 28: --out not writable


def test_eval_out_under_a_regular_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "out"
    line = error_line(capsys, "eval", "--tasks", "tweet_sentiment", "--out", str(out),
                      "--no-progress")
    assert f"--out {out}: cannot write here (Not a directory)" in line


def test_train_out_under_a_regular_file_is_one_line(capsys, tmp_path, tiny_model):  # noqa: F811
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "out"
    line = error_line(capsys, "train", *TINY_ARGS, "--model", tiny_model, "--out", str(out))
    assert f"--out {out}: cannot write here (Not a directory)" in line


# ---------------------------------------------------------------- training: the model's window


@pytest.mark.parametrize("extra, message", [
    (["--max-length", "96"], "--max-length 96 is more than the model's window (64 positions); "
                             "use --max-length 64 or less"),
    (["--max-length", "60", "--method", "prompt-tuning"],
     "--max-length 60 + 20 soft-prompt tokens is more than the model's window (64 positions); "
     "use --max-length 44 or less"),
])
def test_train_max_length_beyond_the_model_window(capsys, tmp_path, gpt2_64_dir, extra, message):
    out = tmp_path / "out"
    line = error_line(capsys, "train", *TINY_ARGS, "--model", gpt2_64_dir, *extra, "--out", str(out))
    assert message in line and not out.exists()
