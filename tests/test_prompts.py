"""Prompts reproduce the first study's formats exactly, and the separator rule keeps
tokens(prompt) a prefix of tokens(prompt + target): training masks and evaluation
scores both cut the sequence at len(tokens(prompt))."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from genft.cli import main
from genft.tasks.prompts import TERMINATOR, cut_generation, kshot_prompt, render, separator, target_text
from genft.tasks.registry import TaskRegistry

# Study A's table (shared/reference/papers.md), verbatim; `{x}` is a field.
STUDY_FORMATS = {
    "summarization": (r"### Input:\n{input}\n### Summary:",
                      r"Please read the following text:{input}\nProvide a summary:"),
    "question_generation": (r"### Input:\n{input}\n### Answer:\n{answer}\n### Question:",
                            r"Given the context:{input}\nAnd the answer:{answer}\nGenerate a suitable question:"),
    "sentiment": (r"### Input:\n{input}\n### Sentiment:",
                  r"Analyze the sentiment of the following text:{input}\nSentiment:"),
    "nli": (r"### Input_1:\n{input_1}\n### Input_2:\n{input_2}\n### Inference:",
            r"Consider the following texts: Text 1:{input_1}\nText 2:{input_2}\nThe relation is "),
    "paraphrase": (r"### Input_1:\n{input_1}\n### Input_2:\n{input_2}\n### Paraphrase Classification:",
                   r"Let's compare the two sentences: Sentence_1:{input_1}\nSentence_2:{input_2}\nAre they paraphrasing?:"),
}
STUDY_A_TASKS = {
    "summarization": ["xsum", "xlsum", "peerread", "cnn_dailymail"],
    "question_generation": ["socialiqa", "tweetqa", "sciq"],
    "sentiment": ["amazon", "amazon_food", "sst2", "yelp"],
    "paraphrase": ["paws", "qqp", "stsb"],
    "nli": ["mnli_m", "mnli_mm", "rte", "gpt_nli"],
}
PAPERS_MD = Path(__file__).resolve().parents[2] / "shared" / "reference" / "papers.md"


def study(family: str, fmt: str) -> str:
    raw = STUDY_FORMATS[family][("prompt1", "prompt2").index(fmt)]
    return raw.replace(r"\n", "\n")


def fill(text: str, record: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: record[m.group(1)], text)


@pytest.fixture(scope="module")
def builtins():
    return TaskRegistry()


@pytest.mark.skipif(not PAPERS_MD.exists(), reason="reference table not in this checkout")
def test_table_here_is_the_reference_table():
    text = PAPERS_MD.read_text()
    for family, formats in STUDY_FORMATS.items():
        for f in formats:
            assert f"`{f}`" in text, (family, f)


def test_study_a_has_18_test_sets_in_five_families(builtins):
    names = [n for names in STUDY_A_TASKS.values() for n in names]
    assert len(names) == 18
    for family, tasks in STUDY_A_TASKS.items():
        for name in tasks:
            assert builtins.get(name).family == family


@pytest.mark.parametrize("fmt", ["prompt1", "prompt2"])
@pytest.mark.parametrize("family", list(STUDY_FORMATS))
def test_every_study_task_renders_the_study_format(builtins, family, fmt):
    expected = study(family, fmt)
    fields = re.findall(r"\{(\w+)\}", expected)
    record = {f: f"<{f} text {i}>" for i, f in enumerate(fields)}
    for name in STUDY_A_TASKS[family]:
        got = builtins.get(name).render(record, fmt)
        # The one deviation: trailing spaces move into the separator (see prompts.py).
        assert got == fill(expected, record).rstrip(" "), name


def test_nli_prompt2_with_its_answer_is_the_study_text():
    template = "Consider the following texts: Text 1:{{ input_1 }}\nText 2:{{ input_2 }}\nThe relation is "
    rec = {"input_1": "A man sleeps.", "input_2": "A person rests.", "output": "entailment"}
    p = render(template, rec)
    assert p + target_text(p, "entailment") == fill(study("nli", "prompt2"), rec) + "entailment\n\n"


def test_kshot_prompt_is_demos_with_one_space_and_a_blank_line():
    template = "### Input:\n{{ input }}\n### Sentiment:"
    demos = [{"input": "great", "output": "positive"}, {"input": "awful", "output": "negative"}]
    got = kshot_prompt(template, {"input": "fine"}, demos)
    assert got == ("### Input:\ngreat\n### Sentiment: positive\n\n"
                   "### Input:\nawful\n### Sentiment: negative\n\n"
                   "### Input:\nfine\n### Sentiment:")


def test_separator_and_terminator_rules():
    assert separator("### Summary:") == " "
    assert separator("Answer:\n") == ""
    assert target_text("Sentiment:", "positive") == " positive" + TERMINATOR
    assert cut_generation(" The headline\n\n### Input: more") == "The headline"


@pytest.mark.parametrize("fmt", ["prompt1", "prompt2"])
def test_genft_prompt_prints_the_study_format_with_demos(capsys, tasks, fmt):
    """The exact text `genft prompt` prints, rebuilt from the study's table by hand."""
    task = tasks.get("tweet_sentiment")
    assert main(["prompt", "tweet_sentiment", "--shots", "4", "--format", fmt, "--index", "3"]) == 0
    out = capsys.readouterr().out
    demos, query = task.records("fewshot")[:4], task.records("test")[3]
    expected = "".join(fill(study("sentiment", fmt), d) + " " + d["output"] + "\n\n" for d in demos)
    assert out == expected + fill(study("sentiment", fmt), query) + "\n"


def _prefix_ok(tok, prompt: str, answer: str) -> bool:
    a = tok(prompt, add_special_tokens=False).input_ids
    b = tok(prompt + target_text(prompt, answer), add_special_tokens=False).input_ids
    return b[: len(a)] == a


def test_prompt_ending_in_a_space_would_break_the_token_prefix(smol):
    """Why rendered prompts are right-stripped: the old rule failed on NLI Prompt-2."""
    tok = smol.tokenizer
    raw = "Text 2:A person rests.\nThe relation is "
    a = tok(raw, add_special_tokens=False).input_ids
    b = tok(raw + "entailment" + TERMINATOR, add_special_tokens=False).input_ids
    assert b[: len(a)] != a
    assert _prefix_ok(tok, raw.rstrip(" "), "entailment")


@pytest.mark.parametrize("fmt", ["prompt1", "prompt2"])
@pytest.mark.parametrize("name", ["tweet_sentiment", "bbc_topic", "bbc_headline", "bbc_headline_ood"])
def test_offline_tasks_prompt_tokens_are_a_prefix_of_prompt_plus_target(smol, tasks, name, fmt):
    task = tasks.get(name)
    tok = smol.tokenizer
    demos = task.records("fewshot")[: max(task.spec.shots)]
    records = task.records("test")[:30] + task.records("fewshot")
    for k in (0, len(demos)):
        for r in records:
            p = task.prompt(r, demos[:k], fmt)
            assert _prefix_ok(tok, p, r["output"]), (name, fmt, k, r["id"])


def test_hub_tasks_prompt_tokens_are_a_prefix_of_prompt_plus_target(smol, hub_mirror):
    tok = smol.tokenizer
    for task in hub_mirror.all():
        if task.spec.source.kind != "hub":
            continue
        demos = task.records("fewshot")[: max(task.spec.shots)]
        for fmt in ("prompt1", "prompt2"):
            for i, r in enumerate(task.records("test")):
                p = task.prompt(r, demos if i < 3 else [], fmt)  # long k-shot prompts: a few
                assert _prefix_ok(tok, p, r["output"]), (task.name, fmt, r["id"])
