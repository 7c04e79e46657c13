"""The `genft` command line. Each area registers its own subcommands.

User errors (GenftError) become one line on stderr and exit status 2; Ctrl-C
exits 130 after whatever finished has been saved.
"""

from __future__ import annotations

import argparse
import sys

from genft._version import __version__
from genft.errors import GenftError
from genft.experiments import cli as experiments_cli
from genft.evaluation import cli as evaluation_cli
from genft.tasks import cli as tasks_cli
from genft.training import cli as training_cli

# Each module exposes register(subparsers); its parsers set `func(args) -> int | None`.
COMMAND_MODULES = [tasks_cli, experiments_cli, evaluation_cli, training_cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genft",
        description="Fine-tune causal LMs and measure how what they learned generalizes.",
    )
    parser.add_argument("--version", action="version", version=f"genft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except GenftError as e:
        print(f"genft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genft: interrupted; finished results are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
