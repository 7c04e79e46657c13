"""What every `genft` command's parser shares: how help shows defaults, and renamed options.

Defaults: an option's help ends with ``(default: X)`` when it has a concrete default, written
by argparse from the default itself (so the text cannot drift from the value); an option
whose default is None or False (not given) shows none, and its help says what leaving it out
means ("default: all", "default: the task's own list"). Help texts never state a concrete
default themselves (tests/test_cli_docs.py checks every option of every command).

Renamed options (docs/cli.md#renamed-options) stay as hidden options that stop with one line
naming the new name, exit status 2: an old command line never silently means something else.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help uses HelpFormatter (every subcommand's parser is one)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def renamed(parser: argparse.ArgumentParser, old: str, new: str, why: str = "") -> None:
    """Keep ``old`` as a hidden option that exits with "OLD is now NEW" (docs/cli.md)."""

    class _Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} is now {new}{f' ({why})' if why else ''}")

    parser.add_argument(old, nargs="?", action=_Renamed, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS)
