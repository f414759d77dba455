"""Units of work with done-markers: a unit runs when its key (the hash of its parameters and of the
run ids of the units it depends on) differs from its marker's; concurrent units run side by side."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from inference.io.images import write_text_atomic
from training.recipe_settings import DriverError, FORMAT_VERSION, STEPS

log = logging.getLogger(__name__)


@dataclass
class Unit:
    name: str
    step: str
    depends: tuple[str, ...]
    params: dict
    run: Callable[[bool], dict]  # resume -> result (JSON)
    outputs: Callable[[], list[Path]] = lambda: []
    resumable: bool = False
    concurrent: bool = False  # may run beside other concurrent units (see execute_units)


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class StateStore:
    """Markers under WORK/state: `<unit>.json` when done, `<unit>.started.json` while running."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str, started: bool = False) -> Path:
        return self.folder / f"{name}{'.started' if started else ''}.json"

    def load(self, name: str, started: bool = False) -> dict | None:
        try:
            return json.loads(self.path(name, started).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, name: str, payload: dict, started: bool = False) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name, started)
        write_text_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")

    def remove(self, name: str, started: bool = False) -> None:
        self.path(name, started).unlink(missing_ok=True)


def execute_units(units: Sequence[Unit], store: StateStore, *, steps: Iterable[str], redo: Iterable[str] = (),
                  parallel: int = 1) -> list[dict]:
    """Run the selected steps' units in order; skip the done ones, redo the stale ones.

    parallel > 1: consecutive `concurrent` units (the per-organ tumor trainings) that do not depend
    on each other run in up to `parallel` threads at once (each is a subprocess; on one GPU four
    small nnU-Net trainings keep it far busier than one). A failure in one still lets the others of
    its batch finish (their markers are written) before the error is raised.

    Raises DriverError when a selected unit depends on a unit that is not done (or stale) and not
    selected. Returns one record per unit, in unit order: ran / skipped (done) / stale / not done.
    """
    execution = _Execution(store, set(steps), set(redo))
    index = 0
    while index < len(units):
        unit = units[index]
        index += 1
        planned = execution.plan(unit)
        if planned is None:
            continue
        batch = [(unit, *planned)]
        while parallel > 1 and unit.concurrent and index < len(units) and units[index].concurrent \
                and not set(units[index].depends) & {u.name for u, _, _ in batch}:
            planned = execution.plan(units[index])
            if planned is not None:
                batch.append((units[index], *planned))
            index += 1
        if len(batch) == 1:
            execution.execute(*batch[0])
            continue
        log.info("running %s side by side (up to %d at once)", ", ".join(u.name for u, _, _ in batch), parallel)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(execution.execute, *item) for item in batch]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
    return [execution.records[u.name] for u in units if u.name in execution.records]


@dataclass
class _Execution:
    """What one `execute_units` call knows so far: each unit's run id (None: not done), the steps a
    unit that is not done would need, and the records to return."""
    store: StateStore
    steps: set[str]
    redo: set[str]
    run_ids: dict[str, str | None] = field(default_factory=dict)
    needs_steps: dict[str, set[str]] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)

    def plan(self, unit: Unit) -> tuple[str, bool] | None:
        """None when the unit is done or not selected (its record written); else (key, resume)."""
        store, run_ids, needs_steps, records = self.store, self.run_ids, self.needs_steps, self.records
        marker = None if unit.step in self.redo else store.load(unit.name)
        missing = [d for d in unit.depends if run_ids.get(d) is None]
        needs_steps[unit.name] = {unit.step}.union(*(needs_steps[d] for d in missing))
        key = None if missing else digest({"unit": unit.name, "format": FORMAT_VERSION, "params": unit.params,
                                            "upstream": {d: run_ids[d] for d in unit.depends}})
        if marker is not None and key is not None and marker.get("key") == key:
            run_ids[unit.name] = marker["run_id"]
            records[unit.name] = {"unit": unit.name, "step": unit.step, "status": "skipped", "seconds": 0.0}
            log.info("%-22s done, skipped", unit.name)
            return None
        run_ids[unit.name] = None
        if unit.step not in self.steps:
            status = "stale" if store.load(unit.name) is not None else "not done"
            records[unit.name] = {"unit": unit.name, "step": unit.step, "status": status, "seconds": 0.0}
            return None
        if missing:
            wanted = sorted(set().union(*(needs_steps[d] for d in missing)) - self.steps, key=STEPS.index)
            raise DriverError(f"{unit.name} (step {unit.step}) needs {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not done or stale; add "
                              f"{'step' if len(wanted) == 1 else 'steps'} {','.join(wanted)} to --steps")
        started = store.load(unit.name, started=True)
        return key, unit.resumable and started is not None and started.get("key") == key

    def execute(self, unit: Unit, key: str, resume: bool) -> None:
        store = self.store
        store.remove(unit.name)
        if not resume:
            for path in unit.outputs():
                remove_path(path)
        store.save(unit.name, {"key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, started=True)
        log.info("%-22s running (step %s%s)", unit.name, unit.step, ", resuming" if resume else "")
        start = time.perf_counter()
        result = unit.run(resume)
        seconds = round(time.perf_counter() - start, 1)
        run_id = uuid.uuid4().hex
        store.save(unit.name, {"unit": unit.name, "step": unit.step, "key": key, "run_id": run_id,
                               "params": unit.params, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "seconds": seconds, "result": result})
        store.remove(unit.name, started=True)
        self.run_ids[unit.name] = run_id
        self.records[unit.name] = {"unit": unit.name, "step": unit.step, "status": "ran", "seconds": seconds}
        log.info("%-22s finished in %.1f s", unit.name, seconds)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
