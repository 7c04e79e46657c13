"""The command line's naming and documentation: every option of every command has help text
and is in docs/cli.md, defaults are shown one way, renamed options say their new name."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from genft.cli import build_parser, main

DOC = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def documented_actions(parser: argparse.ArgumentParser):
    return [a for a in parser._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def section(command: str) -> str:
    parts = re.split(r"^## ", DOC, flags=re.M)
    found = [p for p in parts if p.startswith(f"`genft {command}`")]
    assert found, f"docs/cli.md has no section '## `genft {command}`'"
    return found[0]


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_of_every_command_is_in_docs_cli_md(command):
    text = section(command)
    for action in documented_actions(commands()[command]):
        if action.option_strings:
            for option in action.option_strings:
                assert re.search(rf"`{re.escape(option)}(?![\w-])", text), \
                    f"docs/cli.md, genft {command}: option {option} is missing"
        else:
            name = (action.metavar or action.dest).upper()
            assert f"`{name}" in text, f"docs/cli.md, genft {command}: argument {name} is missing"


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_has_help_and_defaults_are_shown_one_way(command):
    parser = commands()[command]
    for action in documented_actions(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"genft {command} {name} has no help text"
        concrete = not (action.default is None or action.default is False or action.default == [])
        if concrete:  # argparse appends "(default: X)": the text must not say it a second time
            assert "default" not in action.help, f"genft {command} {name} states its default twice"
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text


def test_train_help_shows_each_default_once():
    text = " ".join(commands()["train"].format_help().split())
    assert "(default: all)" in text and "(default: all) (default" not in text
    for option in ("--epochs", "--lr-schedule", "--warmup-steps"):
        assert re.search(rf"{option} \S+ \w", text), option  # followed by its help text
    assert "steps of linear warmup from 0 to --lr (default: 0)" in text


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "tweet_sentiment", "--out", "x"], "genft train: error: --task is now --tasks"),
    (["results", "d", "--format", "csv"],
     "genft results: error: --format is now --to (--format is the prompt wording everywhere)"),
])
def test_renamed_options_stop_with_one_line_naming_the_new_one(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_one_vocabulary_formats_are_prompt_wordings_defaulting_to_prompt1():
    from genft.experiments.config import ExperimentConfig

    cmds = commands()
    default = ExperimentConfig.model_fields["formats"].default
    assert cmds["eval"].parse_args(["--tasks", "t", "--out", "o"]).formats == ",".join(default)
    assert cmds["prompt"].parse_args(["t"]).format == default[0]
    for name, parser in cmds.items():
        options = {o for a in parser._actions for o in a.option_strings
                   if a.help is not argparse.SUPPRESS}
        assert "--task" not in options, name
        for action in documented_actions(parser):
            if {"--format", "--formats"} & set(action.option_strings):
                assert set(action.choices or action.metavar.split(",")) <= {"prompt1", "prompt2"}


def test_the_api_uses_the_same_names():
    import genft
    from genft.errors import GenftError

    with pytest.raises(GenftError, match=r"fmt= is now format="):
        genft.evaluate("no-model", "tweet_sentiment", fmt="prompt2")  # refused before any load
