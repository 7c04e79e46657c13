"""`genft run`'s one overall progress bar: training and evaluation on one scale, so its ETA
covers the whole run, not only the cells.

Work is measured in the dry run's token estimates (genft.experiments.plan.token_estimates):
a cell weighs the tokens it reads, a training job the tokens it trains on times
TRAIN_TOKEN_COST. Training advances the bar after every optimizer step (when the job runs in
this process; on Ray, when it finishes), evaluation after every cell. What an earlier run
already stored counts as done from the start.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from genft.experiments.plan import Cell, Plan, TrainJob, token_estimates

# A trained token costs a forward and a backward pass, about 3 forward passes (6N vs 2N
# FLOPs per token for an N-parameter model); an evaluated token one forward pass.
TRAIN_TOKEN_COST = 3


class RunProgress:
    def __init__(self, plan: Plan, done: set[str], trained: set[str], enabled: bool):
        cells, jobs = token_estimates(plan)
        # every cell weighs at least 1, so a plan with unknown sizes still moves
        self.cells = {k: max(1, v) for k, v in cells.items()}
        self.jobs = {k: TRAIN_TOKEN_COST * v for k, v in jobs.items()}
        self.share = {k: 1.0 if k in trained else 0.0 for k in self.jobs}  # of each job, done
        self.n_cells, self.cells_done = len(cells), len(done & set(cells))
        self.finished = trained & set(jobs)
        self.activity = ""
        initial = (sum(w for k, w in self.cells.items() if k in done)
                   + sum(w for k, w in self.jobs.items() if k in trained))
        self.bar = tqdm(total=sum(self.cells.values()) + sum(self.jobs.values()), initial=initial,
                        desc="run", disable=not enabled, dynamic_ncols=True, position=0,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self._postfix()

    def training(self, job: TrainJob, share: float) -> None:
        """``share`` (0..1) of ``job``'s training is done."""
        if share > self.share[job.key]:
            self.bar.update(self.jobs[job.key] * (share - self.share[job.key]))
            self.share[job.key] = share

    def trained(self, job: TrainJob) -> None:
        self.training(job, 1.0)
        self.finished.add(job.key)
        self._postfix()

    def doing(self, activity: str) -> None:
        """What the run is busy with ("training ft ...", "evaluating base"), after the counts."""
        self.activity = activity
        self._postfix()

    def evaluated(self, cell: Cell) -> None:
        self.cells_done += 1
        self.bar.update(self.cells[cell.key])
        self._postfix()

    def write(self, line: str) -> None:
        """Print ``line`` above the bar without tearing it (`genft eval`'s per-cell lines)."""
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()

    def _postfix(self) -> None:
        jobs = f"jobs {len(self.finished)}/{len(self.jobs)}, " if self.jobs else ""
        self.bar.set_postfix_str(f"{jobs}cells {self.cells_done}/{self.n_cells}"
                                 + (f", {self.activity}" if self.activity else ""))
