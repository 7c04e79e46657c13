"""The `genft` command line. Each area registers its own subcommands.

User errors (GenftError) become one line on stderr and exit status 2; Ctrl-C
exits 130 after whatever finished has been saved. Every option of every command is
listed in docs/cli.md (tests/test_cli_docs.py walks build_parser() to keep it so).
"""

from __future__ import annotations

import os
import sys

from genft._version import __version__
from genft.cliutil import Parser
from genft.errors import GenftError
from genft.experiments import cli as experiments_cli
from genft.evaluation import cli as evaluation_cli
from genft.report import cli as report_cli
from genft.tasks import cli as tasks_cli
from genft.training import cli as training_cli

# Each module exposes register(subparsers); its parsers set `func(args) -> int | None`.
COMMAND_MODULES = [tasks_cli, experiments_cli, report_cli, evaluation_cli, training_cli]


def build_parser() -> Parser:
    parser = Parser(
        prog="genft",
        description="Fine-tune causal LMs and measure how what they learned generalizes.",
    )
    parser.add_argument("--version", action="version", version=f"genft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def parse_args(argv: list[str] | None = None):
    """argparse, plus `genft run`'s KEY=VALUE overrides anywhere after the config (argparse
    takes a positional list only in one piece: `run cfg a=1 --dry-run b=2` leaves b=2 over)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *(a for a in extra if _is_override(a))]
        extra = [a for a in extra if not _is_override(a)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args) or 0
    except GenftError as e:
        print(f"genft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genft: interrupted; finished results are saved", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `genft results DIR -o - | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
