"""The notebook API: everything the CLI does, one call each.

    import genft
    outcome = genft.run("examples/quickstart.yaml", out="runs/quickstart")  # = genft run
    genft.run("examples/quickstart.yaml", overrides=["training.lr=1e-4"])  # = genft run CFG training.lr=1e-4
    df = genft.load_results("runs/quickstart")                              # tidy pandas table
    ckpt = genft.train(tasks=["tweet_sentiment"], method="ft", steps=40, out="runs/ft")
    cell = genft.evaluate(ckpt, "bbc_headline", shots=1)                    # one CellResult
    genft.evaluate_tasks(ckpt, "family:news", out="runs/e")                 # = genft eval
    items = genft.load_items("runs/e")                                      # per-item predictions

See docs/api.md for a worked example.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def run(config, out: str | Path | None = None, *, overrides=(), model: str | None = None,
        dry_run: bool = False, progress: bool = True, report: bool = True,
        threads: int | None = None, executor: str | None = None, ray_address: str | None = None,
        backends=None, echo=print, **model_options):
    """Run (or resume) the grid of ``config`` (a YAML path, a dict or an ExperimentConfig),
    then write its report: the one place that composes the two layers (the runner knows
    nothing of reports; the report reads only the store).

    ``overrides``: ``"KEY=VALUE"`` strings applied to the config before it is validated
    (``["training.lr=1e-4", "methods.ft.steps=20", "shots.sentiment=[0,4]"]``, the values
    read as YAML; docs/config.md#overrides). ``model``: the model's name (= ``model=NAME``,
    after the overrides); ``model_options`` (dtype, device, revision, attn_implementation,
    trust_remote_code, chat_template) then override the model's options. The run stores (and
    keys its jobs and cells by) the config as overridden, so the same overrides resume the same run.

    Returns a RunOutcome: ``out``, ``plan``, ``computed`` (cells computed by this call),
    ``trained`` (jobs trained by this call) and ``report`` (the HTML path). ``backends``
    replaces the real loader/trainer/evaluator (tests use fakes)."""
    from genft import distributed
    from genft.errors import disk_full_is_one_line
    from genft.experiments.config import Override
    from genft.experiments.runner import run_experiment
    from genft.report import build_report

    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = [o if isinstance(o, Override) else Override.parse(o) for o in overrides]
    if model is not None:
        overrides.append(Override(("model",), model, f"model={model}"))
    outcome = run_experiment(config, out, dry_run=dry_run, progress=progress, threads=threads,
                             executor=executor, ray_address=ray_address, backends=backends,
                             echo=echo, model_options=_model_options(model_options),
                             overrides=overrides)
    if report and not dry_run and distributed.is_main():  # rank 0 alone writes (torchrun/srun)
        with disk_full_is_one_line(outcome.out, "writing the report"):
            outcome.report = build_report(outcome.out)
        echo(f"report: {outcome.report}" if outcome.report else "report: no finished cells yet")
    distributed.barrier()  # no rank leaves (and tears the process group down) before the report
    return outcome


def train(*, out: str | Path, progress: bool = True, resume: bool = False, **settings) -> Path:
    """Train one model (= `genft train`); ``settings`` are TrainConfig fields
    (model, tasks, method, steps, lr, mixed_precision, ...; ``model`` a name or a mapping
    {name, dtype, device, ...}). Returns the final checkpoint directory."""
    from genft.training import TrainConfig, train as _train

    return Path(_train(TrainConfig(**settings, out=str(out)), progress=progress, resume=resume))


def evaluate(model, task, shots: int = 0, format: str = "prompt1", *, dtype: str | None = None,
             device: str | None = None, revision: str | None = None,
             attn_implementation: str | None = None, trust_remote_code: bool | None = None,
             chat_template: bool | None = None, **kwargs):
    """Evaluate one cell. ``model``: a name, a checkpoint directory, a mapping {name, dtype,
    device, ...} or a LoadedModel (the model options apply to the first three; ``chat_template``
    wraps prompts in the model's chat template); ``task``: a task name or Task; ``format``: the
    prompt wording (prompt1, prompt2), as a config's ``formats``. Other keyword arguments go to
    evaluate_cell (sampler, limit, batch_size, seed, scoring, backend, progress). Returns a
    CellResult."""
    from genft.errors import GenftError
    from genft.evaluation import evaluate_cell
    from genft.models import ModelSpec, load_model
    from genft.tasks import registry

    if "fmt" in kwargs:  # the keyword's name before one vocabulary (docs/cli.md)
        raise GenftError("genft.evaluate: fmt= is now format= (the prompt wording)")
    if isinstance(model, (str, Path, dict, ModelSpec)):
        spec = ModelSpec.of(str(model) if isinstance(model, Path) else model)
        loaded = load_model(spec, dtype=dtype, device=device, revision=revision,
                            attn_implementation=attn_implementation,
                            trust_remote_code=trust_remote_code, chat_template=chat_template)
    else:
        loaded = model
    task = registry().get(task) if isinstance(task, str) else task
    return evaluate_cell(loaded, task, shots, format, **kwargs)


def evaluate_tasks(model, tasks, out: str | Path, *, shots: list[int] | None = None,
                   formats=("prompt1",), sampler: str = "first", scoring: str = "loglik",
                   limit: int | None = None, seed: int = 0, batch_size: int | str = 8,
                   include=(), progress: bool = True, backend: str = "fast", backends=None,
                   echo=print, **model_options):
    """Evaluate one model on every (task, shots, format) cell into OUT/results.db (= `genft eval`):
    a one-model plan run by the same runner, keys and store as :func:`run`, so OUT/.lock keeps
    a second run out, a rerun computes only the missing cells, and :func:`load_results`,
    :func:`load_items` and :func:`write_report` read the folder. ``model``: a name, a directory
    or a mapping {name, dtype, device, ...} (``model_options`` override it); ``tasks``: names
    and/or ``family:NAME``, a list or comma-separated; ``shots`` default to each task's own
    list; ``backend`` names what computes the scores (``"reference"``: the plain, one item at a
    time implementation the fast path is tested against). Returns a
    RunOutcome (``computed``: cells computed by this call)."""
    from pydantic import ValidationError

    from genft.errors import GenftError, short
    from genft.experiments.config import EvalConfig
    from genft.experiments.plan import build_eval_plan
    from genft.experiments.runner import run_plan
    from genft.models import ModelSpec, check_model_name

    spec = ModelSpec.of(str(model) if isinstance(model, Path) else model)
    try:
        cfg = EvalConfig(model=spec.replace(**_model_options(model_options)),
                         tasks=tasks.split(",") if isinstance(tasks, str) else list(tasks),
                         include=[str(p) for p in include], shots=shots, formats=list(formats),
                         limit=limit, sampler=sampler, scoring=scoring, backend=backend,
                         eval_seed=seed, eval_batch_size=batch_size)
    except ValidationError as e:
        err = e.errors()[0]
        raise GenftError(f"{'.'.join(map(str, err['loc']))}: "
                         f"{short(err['msg'].removeprefix('Value error, '), 320, plain=True)}"
                         ) from None
    check_model_name(cfg.model.name)  # before the run takes OUT and starts its progress bar
    plan = build_eval_plan(cfg)
    return run_plan(plan, out, backends=backends, progress=progress, echo=echo, cell_lines=True)


def _model_options(options: dict) -> dict:
    from genft.errors import GenftError
    from genft.models import MODEL_OPTIONS

    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise GenftError(f"unknown option(s) {unknown}; the model options are "
                         f"{', '.join(MODEL_OPTIONS)}")
    return {k: v for k, v in options.items() if v is not None}


def load_results(out: str | Path, all_cells: bool = False) -> pd.DataFrame:
    """The tidy results of an output directory: one row per (cell, metric), for the cells of
    the latest run's plan (``all_cells=True``: everything ever stored there)."""
    from genft.experiments.results import load_results as _load

    return _load(out, all_cells)


def load_items(out: str | Path, all_cells: bool = False) -> pd.DataFrame:
    """The per-item predictions of an output directory: one row per (cell, test item) with the
    cell's coordinates, the item's id, prediction, gold answer and score (= `genft results
    --items`)."""
    from genft.experiments.results import load_items as _load

    return _load(out, all_cells)


def write_report(out: str | Path) -> Path:
    """(Re)write OUT/report.html and OUT/report.md; returns the HTML path."""
    from genft.report import build_report

    return build_report(out)
