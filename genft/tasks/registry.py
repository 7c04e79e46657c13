"""Finding tasks: the built-in YAMLs plus any folders the user adds with ``--include``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from genft.errors import GenftError, did_you_mean
from genft.tasks.task import Task, load_task_file

BUILTIN_DIR = Path(__file__).parent / "builtin"


class TaskRegistry:
    """Name -> task YAML, loaded lazily (listing 30 tasks must not read 30 datasets)."""

    def __init__(self, include: list[str | Path] = ()):
        self._paths: dict[str, Path] = {}
        self._loaded: dict[str, Task] = {}
        for folder in [BUILTIN_DIR, *map(Path, include)]:
            self._add_folder(folder)

    def _add_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise GenftError(f"--include: {folder} is not a folder of task YAML files")
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            task = load_task_file(path)
            if task.name in self._paths and self._paths[task.name] != path:
                raise GenftError(f"{path}: task name {task.name!r} already defined in "
                                 f"{self._paths[task.name]}")
            self._paths[task.name] = path
            self._loaded[task.name] = task

    @property
    def names(self) -> list[str]:
        return list(self._paths)

    def get(self, name: str) -> Task:
        if name not in self._loaded:
            raise GenftError(f"unknown task {name!r}{did_you_mean(name, self.names)}; "
                             f"see `genft tasks`")
        return self._loaded[name]

    def all(self) -> list[Task]:
        return [self._loaded[n] for n in self.names]

    def select(self, selector: str | list[str]) -> list[Task]:
        """Resolve "t1,t2,family:sentiment" (or a list of such items) to tasks, in order."""
        items = selector.split(",") if isinstance(selector, str) else selector
        chosen: dict[str, Task] = {}
        for item in (i.strip() for i in items if i.strip()):
            if item.startswith("family:"):
                family = item.removeprefix("family:")
                found = [t for t in self.all() if t.family == family]
                if not found:
                    families = sorted({t.family for t in self.all()})
                    raise GenftError(f"no tasks in family {family!r}"
                                     f"{did_you_mean(family, families)}; families: {families}")
                chosen.update((t.name, t) for t in found)
            else:
                chosen[item] = self.get(item)
        if not chosen:
            raise GenftError("no tasks selected")
        return list(chosen.values())


@lru_cache(maxsize=8)
def registry(include: tuple[str, ...] = ()) -> TaskRegistry:
    """A shared registry per include list, so repeated lookups reuse loaded data."""
    return TaskRegistry(list(include))
