"""`genft report`: (re)write the report of an output directory."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="(re)write the HTML + Markdown report of an output directory",
                       description="Write DIR/report.html (self-contained) and DIR/report.md. "
                                   "Works while a run is still going (a partial report).")
    p.add_argument("dir", help="a `genft run` or `genft eval` output directory")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from genft.errors import GenftError
    from genft.report.build import build_report

    try:
        path = build_report(Path(args.dir))
    except OSError as e:  # an unwritable folder, a full disk: one line naming the file
        raise GenftError(f"{args.dir}: cannot write the report ({e.strerror or e}: "
                         f"{e.filename})") from None
    print(path if path is not None else f"{args.dir}: no finished cells yet")
