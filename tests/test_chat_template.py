"""Chat templates (``chat_template: true``): prompts wrapped by the tokenizer's own template, as
one user turn ending in the assistant header; the same wrapping in training and evaluation; the
prefix cache still exact; keys unchanged when the option is off; a tokenizer without a template
refused in one line."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from genft.cli import main
from genft.errors import GenftError
from genft.experiments.store import Store
from genft.evaluation.encoding import build_inputs
from genft.models import DEFAULT_MODEL, ModelSpec, load_model, load_tokenizer, prompt_tokenizer, resolve
from genft.tasks.prompts import TERMINATOR, model_prompt, target_text
from genft.training.config import TrainConfig
from genft.training.data import build_examples, train_pool
from test_eval_exact import both

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOL = 1e-5  # relative: fp32 noise alone reaches 2e-5 absolute on a -10 log-prob, unwrapped too


@pytest.fixture(scope="module")
def chatml():
    """SmolLM2's tokenizer with a small ChatML template (no system turn): exact text to check."""
    tok = load_tokenizer(DEFAULT_MODEL)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory) -> str:
    """A tiny random Llama whose tokenizer has no chat template."""
    from conftest import make_tiny_model

    folder = Path(make_tiny_model(tmp_path_factory.mktemp("no-template")))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    assert not load_tokenizer(str(folder)).chat_template
    return str(folder)


def test_off_by_default_and_keys_unchanged():
    """Off: the spec writes out as its name and its identity is what it was before the option
    existed, so every stored job and cell key stays valid. On: it is part of the identity."""
    off = ModelSpec.of({"name": "smollm2-135m", "chat_template": False})
    assert off == ModelSpec.of("smollm2-135m") and off.model_dump() == off.identity() == "smollm2-135m"
    cfg = TrainConfig(tasks=["tweet_sentiment"], steps=1, out="x")
    assert cfg.identity()["model"] == "smollm2-135m"
    on = off.replace(chat_template=True)
    assert on.identity() == {"name": "smollm2-135m", "chat_template": True}
    assert TrainConfig(tasks=["tweet_sentiment"], steps=1, out="x", model=on).identity() != cfg.identity()


def test_prompt_is_one_user_turn_and_the_answer_follows_the_header(chatml):
    prompt = "Review: good\nSentiment: positive\n\nReview: bad\nSentiment:"
    assert model_prompt(chatml, prompt, False) == prompt
    wrapped = model_prompt(chatml, prompt, True)
    assert wrapped == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert target_text(wrapped, "negative") == "negative" + TERMINATOR  # no space after the header


def test_a_template_bos_is_not_doubled(chatml):
    """A tokenizer that adds BOS itself reads the template's BOS once: the ids are exactly
    apply_chat_template's."""
    tok = load_tokenizer(DEFAULT_MODEL)  # its bos token is <|im_start|>, the template's first
    tok.add_bos_token = True
    assert tok("a").input_ids[0] == tok.bos_token_id
    messages = [{"role": "user", "content": "Review: bad\nSentiment:"}]
    ids = tok(model_prompt(tok, messages[0]["content"], True)).input_ids
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert ids == list(expected) and ids[:2] != [tok.bos_token_id] * 2


def test_the_default_model_carries_its_chat_template():
    """The converted SmolLM2-135M-Instruct tokenizer keeps the GGUF's ChatML template (with its
    default system turn); a wrapped prompt tokenizes exactly as apply_chat_template's ids."""
    tok, chat = prompt_tokenizer(ModelSpec(chat_template=True))
    assert chat and tok.chat_template
    content = "### Input:\nnot bad at all\n### Sentiment:"
    text = model_prompt(tok, content, True)
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
    expected = tok.apply_chat_template([{"role": "user", "content": content}],
                                       add_generation_prompt=True, tokenize=True)
    assert tok(text).input_ids == list(expected if isinstance(expected, list) else expected["input_ids"])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("task_name,shots,limit", [("tweet_sentiment", 4, 3), ("bbc_headline", 1, 2)])
def test_fast_path_matches_reference_on_wrapped_prompts(smol, tasks, task_name, shots, limit):
    """Wrapping happens on the text before tokenization, so the shared token prefix (system
    turn, user header, demos) is cached exactly: predictions identical, log-probs within 1e-5
    (relative; measured: at most 1.8e-6, as unwrapped prompts' 3.1e-6)."""
    chat = dataclasses.replace(smol, chat_template=True)
    task = tasks.get(task_name)
    fast, ref = both(chat, task, shots, "prompt1", limit=limit, batch_size=2)
    assert fast.n == ref.n == limit
    assert [i["prediction"] for i in fast.items] == [i["prediction"] for i in ref.items]
    for a, b in zip(fast.items, ref.items):
        for label in a.get("scores", {}):
            assert a["scores"][label] == pytest.approx(b["scores"][label], rel=TOL, abs=TOL)
    inputs = build_inputs(task, smol.tokenizer, shots, "prompt1", limit=limit, chat_template=True)
    plain = build_inputs(task, smol.tokenizer, shots, "prompt1", limit=limit)
    assert all(it.prompt.startswith("<|im_start|>system") and it.prompt.endswith("assistant\n")
               for it in inputs.items)
    assert inputs.prefix_len > plain.prefix_len > (50 if task.type == "classification" else 0)
    assert fast.info["prefix_tokens"] == inputs.prefix_len
    assert [i["prompt_hash"] for i in fast.items] == [it.prompt_hash for it in inputs.items]
    if task.type == "classification":  # the label continues right after the header: no space
        assert inputs.items[0].continuations[0] == smol.tokenizer(task.labels[0]).input_ids
    else:
        assert all(TERMINATOR not in i["prediction"] for i in fast.items)


def test_training_reads_the_wrapped_prompt_with_loss_on_the_answer_only(chatml, tasks):
    """The model is trained on the format it is evaluated on: the same wrapped text as
    evaluation's items, template tokens without loss, the answer right after the header."""
    task = tasks.get("tweet_sentiment")
    pool = train_pool(task, 40)
    for k in (0, 2):
        examples = build_examples([task], chatml, [pool], [k], 2048, seed=0, chat_template=True)
        for ex, rec in list(zip(examples, pool))[:6]:
            assert ex.prompt.startswith("<|im_start|>user\n")
            assert ex.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
            assert chatml.decode(ex.input_ids[:ex.loss_start]) == ex.prompt
            assert chatml.decode(ex.input_ids[ex.loss_start:]) == rec["output"] + TERMINATOR
            assert ex.n_demos == k and ex.prompt.count(TERMINATOR) == k  # demos inside the turn
    items = build_inputs(task, chatml, 0, "prompt1", limit=2, chat_template=True).items
    rendered = [model_prompt(chatml, task.render(r, "prompt1"), True) for r in task.records("test")[:2]]
    assert [it.prompt for it in items] == rendered


def test_a_checkpoint_trained_wrapped_is_read_wrapped(tmp_path, tiny_model):
    from genft.training import train

    model = ModelSpec(name=tiny_model, chat_template=True)
    cfg = TrainConfig(tasks=["tweet_sentiment"], train_size=4, batch_size=4, max_length=96,
                      steps=1, model=model, out=str(tmp_path / "run"))
    final = train(cfg, progress=False)
    assert load_model(final).chat_template and prompt_tokenizer(ModelSpec(name=str(final)))[1]
    assert not load_model(tiny_model).chat_template


def one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genft: error: "), err
    return err


def test_a_tokenizer_without_a_template_is_one_line(no_template_dir, tmp_path, capsys):
    msg = "chat_template is on, but its tokenizer has no chat template"
    assert msg in one_line(capsys, ["prompt", "tweet_sentiment", "--model", no_template_dir,
                                    "--chat-template"])
    assert msg in one_line(capsys, ["eval", "--model", no_template_dir, "--chat-template",
                                    "--tasks", "tweet_sentiment", "--limit", "1",
                                    "--out", str(tmp_path / "eval"), "--no-progress"])
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {no_template_dir}, chat_template: true}}\n"
                      "train_tasks: [tweet_sentiment]\nmethods: {ft: {steps: 1}}\n")
    assert msg in one_line(capsys, ["run", str(config), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(GenftError, match=msg):
        load_model(ModelSpec(name=no_template_dir, chat_template=True))


def test_genft_prompt_shows_what_the_model_reads(capsys):
    assert main(["prompt", "tweet_sentiment", "--shots", "1"]) == 0
    plain = capsys.readouterr().out
    assert main(["prompt", "tweet_sentiment", "--shots", "1", "--chat-template"]) == 0
    wrapped = capsys.readouterr().out
    assert wrapped.startswith("<|im_start|>system\n") and plain[:-1] in wrapped
    assert wrapped.endswith("<|im_end|>\n<|im_start|>assistant\n\n")  # print's own newline last
    assert main(["prompt", "tweet_sentiment", "--model", str(resolve(DEFAULT_MODEL))]) == 0
    assert not capsys.readouterr().out.startswith("<|im_start|>")  # a model alone: as it was


def test_every_model_command_takes_the_option():
    from genft.cli import build_parser

    parser = build_parser()
    for command in (["eval", "--tasks", "tweet_sentiment", "--out", "x"], ["train", "--tasks", "tweet_sentiment", "--out", "x"], ["run", "c.yaml"]):
        args = parser.parse_args([*command, "--chat-template"])
        assert args.chat_template is True
        assert parser.parse_args(command).chat_template is None  # not given: the config decides


def test_label_words_are_checked_as_they_follow_the_assistant_header(tmp_path, chatml, tasks):
    """" good"/" goodness" start with different tokens, "good"/"goodness" (after the header, no
    space) with the same one: first-token scoring is refused only where it is ambiguous."""
    from genft.tasks import check_label_words
    from test_errors_models import _task

    task = _task(tmp_path, "good, goodness")
    check_label_words(task, chatml, "first-token")
    check_label_words(task, chatml, "loglik", chat_template=True)
    with pytest.raises(GenftError, match="'good' and 'goodness' start with the same token"):
        check_label_words(task, chatml, "first-token", chat_template=True)
    for builtin in tasks.all():  # every built-in task stays usable wrapped
        check_label_words(builtin, chatml, "first-token", chat_template=True)



def test_a_wrapped_model_is_refused_before_its_first_cell_when_a_task_is_ambiguous_wrapped(
        tiny_model, tmp_path, capsys):
    """The runner checks every task's label words before the model's first cell, as the model
    reads them: "good"/"goodness" are told apart by their first token only without the header."""
    from test_errors_models import _task

    _task(tmp_path / "tasks", "good, goodness")
    argv = ["eval", "--model", tiny_model, "--tasks", "tweet_sentiment,mytask", "--shots", "0",
            "--scoring", "first-token", "--include", str(tmp_path / "tasks"), "--limit", "2",
            "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--out", str(tmp_path / "wrapped"), "--chat-template"]) == 2
    assert "'good' and 'goodness' start with the same token" in capsys.readouterr().err
    assert not (tmp_path / "wrapped" / "results.db").is_file() or not Store(
        tmp_path / "wrapped" / "results.db").cells()  # not even tweet_sentiment's cell


def test_genft_eval_keeps_wrapped_and_plain_cells_apart(tiny_model, tmp_path, capsys):
    """The same cell with and without the template in one --out: two cells (the model's
    identity carries chat_template), the second computed, not taken for the first."""
    import genft

    argv = ["eval", "--model", tiny_model, "--tasks", "tweet_sentiment", "--shots", "0",
            "--formats", "prompt1", "--limit", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0 and main([*argv, "--chat-template"]) == 0
    cells = genft.load_results(tmp_path, all_cells=True)["cell_key"].unique()
    assert len(cells) == 2
