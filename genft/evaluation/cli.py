"""`genft eval`: evaluate a model on every (task, shots, format) cell."""

from __future__ import annotations

from genft import console
from genft.errors import GenftError
from genft.evaluation.backends import DEFAULT_BACKEND, backend_names
from genft.evaluation.scoring import DEFAULT_SCORING, scoring_names
from genft.models import DEFAULT_MODEL, add_model_options
from genft.tasks.cli import add_include_option
from genft.tasks.demos import SAMPLERS
from genft.tasks.schema import FORMATS


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model on tasks × shots × prompt formats",
        description="Evaluate a model (a name, a directory, a PEFT adapter or a genft checkpoint) on "
                    "every (task, shots, format) cell. Each finished cell is stored with its items in "
                    "OUT/results.db (as `genft run` stores them: `genft results` and `genft report` "
                    "read it); rerunning skips finished cells. "
                    "Under torchrun/srun (see docs/scaling.md) the items are split across processes.")
    add_include_option(p)
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                   help="model to evaluate: an alias, a Hub id, a directory, a PEFT adapter or a "
                        "genft checkpoint")
    p.add_argument("--tasks", required=True, metavar="T1,T2|family:F",
                   help="task names and/or family:NAME, comma-separated")
    p.add_argument("--shots", metavar="K1,K2", help="demo counts (default: each task's own list)")
    p.add_argument("--formats", default="prompt1", metavar=",".join(FORMATS),
                   help="prompt wordings, comma-separated (as a config's `formats`)")
    p.add_argument("--sampler", choices=SAMPLERS, default="first",
                   help="how demos are chosen (first: the first k of the few-shot pool)")
    p.add_argument("--scoring", choices=scoring_names(), default=DEFAULT_SCORING,
                   help="classification rule: loglik (label log-likelihood), first-token (its "
                        "first token's), loglik-per-token, loglik-per-byte (length-normalized), or "
                        "a registered one; see docs/evaluation.md")
    p.add_argument("--limit", type=int, help="only the first N test items of each task")
    p.add_argument("--batch-size", default="8", metavar="B|auto",
                   help="rows per forward pass, or 'auto' to pick from free memory")
    p.add_argument("--seed", type=int, default=0, help="demo sampling seed (random sampler)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--backend", choices=backend_names(), default=DEFAULT_BACKEND,
                   help="what computes the scores: fast (prefix-cached batches), reference (plain, "
                        "one item at a time, for checking), or a registered one")
    p.add_argument("--reference", dest="backend", action="store_const", const="reference",
                   help="same as --backend reference")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    console.add_options(p)
    add_model_options(p)
    p.set_defaults(func=cmd_eval)


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GenftError(f"{option}: expected comma-separated integers, got {text!r}") from None


def cmd_eval(args) -> None:
    """A one-model plan through the runner and store of `genft run` (composed by genft.api:
    evaluation itself knows nothing of plans or stores)."""
    from pathlib import Path

    from genft import distributed
    from genft.api import evaluate_tasks
    from genft.experiments.store import DB_FILE
    from genft.models import model_options

    progress = console.setup(args)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise GenftError(f"--formats: unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    if args.limit is not None and args.limit < 1:
        raise GenftError(f"--limit must be at least 1 (got {args.limit})")
    if args.batch_size != "auto" and not args.batch_size.isdigit() or args.batch_size == "0":
        raise GenftError(f"--batch-size must be a positive integer or 'auto' (got {args.batch_size!r})")
    evaluate_tasks(args.model, args.tasks, args.out,
                   shots=_int_list(args.shots, "--shots") if args.shots else None, formats=formats,
                   sampler=args.sampler, scoring=args.scoring, limit=args.limit, seed=args.seed,
                   batch_size=args.batch_size if args.batch_size == "auto" else int(args.batch_size),
                   include=args.include, progress=progress,
                   echo=(lambda line: None) if args.quiet else print,
                   backend=args.backend, **model_options(args))
    if args.quiet and distributed.is_main():
        print(Path(args.out) / DB_FILE)  # the one final line: where the results are
