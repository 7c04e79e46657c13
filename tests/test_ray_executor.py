"""`genft run --executor ray` on a local Ray instance (2 CPUs) with the tiny model: the same
stored results as the local executor, workers SIGKILLed mid-task retried by Ray with identical
final results, and an address that does not answer refused in one line with nothing lost."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import yaml

from genft.cli import main
from genft.experiments.runner import Backends, run_experiment
from genft.experiments.store import Store
from test_distributed import assert_same_results, stored, tiny_grid

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the workers unpickle this module's helpers by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_model):
    """The config and a local-executor run of it (the reference results)."""
    root = tmp_path_factory.mktemp("raygrid")
    cfg = root / "grid.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_grid(tiny_model), "checkpoints": {"every": 1}}))
    run_experiment(cfg, root / "local", progress=False, report=False, echo=lambda s: None)
    return cfg, root / "local"


class KillOnce:
    """Calls ``real``; its ``at``-th call in a process SIGKILLs that process — once per flag
    file, so Ray's retry of the task runs through."""

    def __init__(self, real, flag, at: int = 1):
        self.real, self.flag, self.at, self.calls = real, str(flag), at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.real(*args, **kwargs)


def test_ray_stores_what_the_local_executor_stores(local_ray, grid, tmp_path):
    cfg, local = grid
    outcome = run_experiment(cfg, tmp_path / "ray", executor="ray", progress=False, report=False,
                             echo=lambda s: None)
    # base and ft: 2 cells each; the step-1 checkpoint: 1
    assert outcome.trained == 1 and outcome.computed == len(stored(local)) == 5
    assert_same_results(stored(local), stored(tmp_path / "ray"), tol=1e-5)
    again = run_experiment(cfg, tmp_path / "ray", executor="ray", progress=False, report=False,
                           echo=lambda s: None)
    assert again.trained == again.computed == 0  # resumed from the driver's store: nothing to do


def test_killed_workers_are_retried_with_identical_results(local_ray, grid, tmp_path):
    cfg, local = grid
    real = Backends()
    backends = Backends(train=KillOnce(real.train, tmp_path / "train-killed"),
                        evaluate_cell=KillOnce(real.evaluate_cell, tmp_path / "eval-killed", at=2))
    run_experiment(cfg, tmp_path / "ray", executor="ray", backends=backends, progress=False,
                   report=False, echo=lambda s: None)
    assert (tmp_path / "train-killed").is_file() and (tmp_path / "eval-killed").is_file()
    assert_same_results(stored(local), stored(tmp_path / "ray"), tol=1e-5)


def test_an_address_that_does_not_answer_is_one_line_and_loses_nothing(grid, capsys):
    cfg, local = grid
    before, runs = stored(local), len(Store.open_existing(local).runs())
    rc = main(["run", str(cfg), "--out", str(local), "--executor", "ray", "--ray-address",
               "127.0.0.1:1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--ray-address 127.0.0.1:1: no Ray cluster" in err
    assert stored(local) == before and len(Store.open_existing(local).runs()) == runs
