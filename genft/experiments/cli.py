"""`genft run` and `genft results` (`genft report` is the report's own, genft/report/cli.py)."""

from __future__ import annotations

from genft import console
from genft.cliutil import renamed
from genft.experiments.results import FILE_TYPES
from genft.models import add_model_options


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run a generalization grid from a config (resumable)",
        description="Train every method of CONFIG on its train tasks, evaluate the base model and "
                    "every trained model on every test set / shot count / format, store each result "
                    "in OUT/results.db as it is computed, and write OUT/report.html. Running the "
                    "same command again computes only what is missing (with the same "
                    "overrides: they are part of the run's config).")
    p.add_argument("config", help="experiment YAML (see docs/config.md)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="change the config before it is validated, e.g. training.lr=1e-4 "
                        "methods.ft.steps=20 shots.sentiment=[0,4] (values are YAML; "
                        "docs/config.md#overrides)")
    p.add_argument("--model", metavar="NAME",
                   help="the model to fine-tune and evaluate (= model=NAME; default: the "
                        "config's `model:`)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (training runs, cells, tokens to process) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    console.add_options(p)
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice; on a CPU shared with other "
                        "jobs, 1 can be much faster)")
    add_model_options(p)  # override the config's `model:` options (after --model)
    p.add_argument("--executor", choices=("local", "ray"),
                   help="where jobs run: this process (default; under torchrun/srun every process "
                        "joins in) or a Ray cluster (overrides the config's `executor:`)")
    p.add_argument("--ray-address", metavar="HOST:PORT|auto",
                   help="the Ray cluster to use (default: the config's `ray_address`, else a "
                        "local Ray instance)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="export the tidy results table (one row per cell and metric)",
                       description="Export DIR's results as a tidy table: one row per evaluation "
                                   "cell and metric, ready for pandas (--items: one row per "
                                   "test item, with its prediction, gold answer and score).")
    p.add_argument("dir", help="a `genft run` or `genft eval` output directory")
    p.add_argument("--output", "-o", metavar="FILE|-",
                   help="where to write; its suffix (.csv, .json, .parquet) is the file type; "
                        "- writes to standard output (default: DIR/results.csv, DIR/items.csv "
                        "with --items)")
    p.add_argument("--to", choices=FILE_TYPES,
                   help="the file type, whatever -o's suffix (default: -o's suffix, else csv)")
    renamed(p, "--format", "--to", "--format is the prompt wording everywhere")
    p.add_argument("--all", action="store_true",
                   help="every cell ever stored, not only those of the latest run's plan")
    p.add_argument("--items", action="store_true",
                   help="per-item predictions instead of per-cell metrics")
    p.set_defaults(func=cmd_results)


def cmd_run(args) -> None:
    """Run, then (rank 0) the results table and a summary line, then what the run said last
    (the report's path, or the dry run's plan): --quiet keeps only that last line."""
    from genft import distributed
    from genft.api import run  # run + report, composed above both layers
    from genft.experiments.store import DB_FILE
    from genft.models import model_options

    progress = console.setup(args)
    said: list[str] = []
    outcome = run(args.config, args.out, overrides=args.overrides, model=args.model,
                  dry_run=args.dry_run, progress=progress, report=not args.no_report,
                  threads=args.threads, executor=args.executor, ray_address=args.ray_address,
                  echo=said.append, **model_options(args))
    if not args.dry_run and distributed.is_main():
        if not args.quiet:
            console.print_results(outcome.out)
        if not args.quiet or not said:
            print(f"this run: {outcome.computed} cells computed, {outcome.trained} models "
                  f"trained; results in {outcome.out / DB_FILE}")
    for line in said:
        print(line)


def cmd_results(args) -> None:
    from genft.experiments.results import export_results

    dest = export_results(args.dir, args.output, to=args.to, all_cells=args.all, items=args.items)
    if dest is not None:  # not when the table itself went to standard output
        print(dest)
