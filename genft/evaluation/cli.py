"""`genft eval`: evaluate a model on every (task, shots, format) cell."""

from __future__ import annotations

from genft import console
from genft.errors import GenftError, check_writable_dir
from genft.models import DEFAULT_MODEL, add_model_options
from genft.tasks.cli import add_include_option
from genft.tasks.demos import SAMPLERS
from genft.tasks.labels import SCORINGS
from genft.tasks.schema import FORMATS


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model on tasks × shots × prompt formats",
        description="Evaluate a model (a name, a directory, a PEFT adapter or a genft checkpoint) on "
                    "every (task, shots, format) cell. Each finished cell is appended to "
                    "OUT/results.jsonl, its items to OUT/items/; rerunning skips finished cells. "
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
    p.add_argument("--scoring", choices=SCORINGS, default="loglik",
                   help="classification: label log-likelihood or first-token logits")
    p.add_argument("--limit", type=int, help="only the first N test items of each task")
    p.add_argument("--batch-size", default="8", metavar="B|auto",
                   help="rows per forward pass, or 'auto' to pick from free memory")
    p.add_argument("--seed", type=int, default=0, help="demo sampling seed (random sampler)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--reference", action="store_true",
                   help="use the slow, plain reference scorer (for checking the fast path)")
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
    from pathlib import Path

    from genft import distributed
    from genft.evaluation.grid import RESULTS_FILE, evaluate_grid, plan_cells
    from genft.models import ModelSpec, load_model, model_options, resolve_device
    from genft.tasks.registry import registry

    progress = console.setup(args)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise GenftError(f"--formats: unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    if args.limit is not None and args.limit < 1:
        raise GenftError(f"--limit must be at least 1 (got {args.limit})")
    if args.batch_size != "auto" and not args.batch_size.isdigit() or args.batch_size == "0":
        raise GenftError(f"--batch-size must be a positive integer or 'auto' (got {args.batch_size!r})")
    tasks = registry(tuple(args.include)).select(args.tasks)
    shots = _int_list(args.shots, "--shots") if args.shots else None
    cells = plan_cells(tasks, shots, formats)
    spec = ModelSpec.of(args.model).replace(**model_options(args))
    resolve_device(spec.device)  # a GPU asked for but absent: one line, before anything is written
    check_writable_dir(args.out)  # before the model is loaded
    loaded = load_model(spec)
    evaluate_grid(loaded, cells, args.out, sampler=args.sampler, limit=args.limit,
                  batch_size=args.batch_size, seed=args.seed, scoring=args.scoring,
                  progress=progress, fast_path=not args.reference,
                  log=(lambda line: None) if args.quiet else print)
    if args.quiet and distributed.is_main():
        print(Path(args.out) / RESULTS_FILE)  # the one final line
