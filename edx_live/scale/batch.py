"""Many inputs of ``edx-live process``: expand, plan what is left to do, run each input as a Dask task, index.

Each input is one task: a whole file or recording processed by :mod:`edx_live.shell.offline` (or
``edx_live.scale.lazy.process_out_of_core``) in a worker process, into its own session folder
``DIR/<name>``. The pure parts (:func:`expand_inputs`, :func:`folder_names`, :func:`plan`,
:func:`is_done`) need no Dask.

Done means: ``DIR/<name>/summary.json`` parses, its ``source`` is the input, and ``DIR/<name>/input.json``
records the input's size and modification time and the analysis options as they are now. A task
writes into ``DIR/.<name>.partial-<token>`` and renames it to ``DIR/<name>`` only once the session
folder and ``input.json`` are complete, so a killed run leaves no folder that looks done.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edx_live.logs import get_logger, truncate

log = get_logger("scale")

#: Inputs a glob picks up: spectrum-image files and recordings.
IMAGE_SUFFIXES = (".hspy", ".bcf", ".pts", ".emd")
RECORDING_SUFFIX = ".edxrec"
SUFFIXES = IMAGE_SUFFIXES + (RECORDING_SUFFIX,)
INPUT_FILE = "input.json"
SUMMARY_FILE = "summary.json"
GLOB_CHARS = frozenset("*?[")
#: Settings sections that do not change a session folder's content.
NOT_ANALYSIS = {"input", "output", "control", "record", "security", "scale", "log_format", "log_level"}


@dataclass(frozen=True)
class Input:
    """One input of the run: an absolute path, or what was given when nothing could be found (``error``)."""

    path: str
    error: str | None = None


@dataclass(frozen=True)
class Options:
    """How each input is processed (the ``process`` command line), the same for every input."""

    frames: int | None = None
    chunk_pixels: int | None = None
    refit_every: int | None = None
    out_of_core: bool = False
    chunk_mb: int | None = None


@dataclass(frozen=True)
class Task:
    """What a worker needs to process one input into ``root/name``."""

    path: str
    root: str
    name: str
    options: Options
    settings: object = field(compare=False)
    fingerprint: dict = field(compare=False, default_factory=dict)


def is_glob(text: str) -> bool:
    return any(c in GLOB_CHARS for c in text)


def expand_inputs(patterns: Sequence[str]) -> list[Input]:
    """Paths and globs (``**`` recursive) to inputs, in order given, each glob sorted, duplicates dropped.

    A glob keeps only spectrum-image files and recordings (:data:`SUFFIXES`); one that matches none is
    an input with an ``error``. A path is kept as given (a missing or unreadable one fails in its task).
    """
    found, seen = [], set()
    for pattern in patterns:
        if is_glob(pattern):
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                             if p.lower().endswith(SUFFIXES) and os.path.isfile(p))
            if not matches:
                found.append(Input(pattern, error=f"no {', '.join(SUFFIXES)} file matches {pattern}"))
                continue
        else:
            matches = [os.path.expanduser(pattern)]
        for match in matches:
            path = str(Path(match).absolute())
            if path not in seen:
                seen.add(path)
                found.append(Input(path))
    return found


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def folder_names(paths: Iterable[str]) -> dict[str, str]:
    """Each input's session folder name: its stem, or ``<stem>-<hash of the path>`` when stems collide.

    Stems are compared ignoring case (file systems that do); the hash makes the name depend on the
    input's own path only, so a name never changes with the order of the inputs.
    """
    paths = list(paths)
    stems = {p: Path(p).stem or "input" for p in paths}
    count: dict[str, int] = {}
    for stem in stems.values():
        count[stem.lower()] = count.get(stem.lower(), 0) + 1
    return {p: stem if count[stem.lower()] == 1 else f"{stem}-{_short_hash(p)}" for p, stem in stems.items()}


def analysis_hash(settings, options: Options) -> str:
    """A hash of what decides a session folder's content: the analysis settings and the process options."""
    tree = settings.model_dump(mode="json", exclude=NOT_ANALYSIS)
    text = json.dumps({"settings": tree, "options": asdict(options)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(path: str, analysis: str) -> dict | None:
    """What ``input.json`` records: the input, its size and mtime, the analysis hash; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"input": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "analysis": analysis}


def is_done(folder: str | Path, path: str, analysis: str) -> bool:
    """Whether ``folder`` holds a complete session folder of ``path`` as it is now, with these options."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        recorded = json.loads((folder / INPUT_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or Path(str(summary.get("source", ""))).absolute() != Path(path):
        return False
    return recorded == fingerprint(path, analysis)


@dataclass(frozen=True)
class Planned:
    """An input and what the run does with it: ``run``, ``skip`` (done before) or ``fail`` (``error``)."""

    input: Input
    name: str | None
    action: str
    error: str | None = None


def plan(inputs: Sequence[Input], root: str | Path, settings, options: Options, force: bool = False) -> list[Planned]:
    """What to do with each input under ``root``: skip the ones done (unless ``force``), run the rest."""
    root = Path(root)
    analysis = analysis_hash(settings, options)
    names = folder_names(i.path for i in inputs if i.error is None)
    planned = []
    for item in inputs:
        if item.error is not None:
            planned.append(Planned(item, None, "fail", item.error))
        elif not force and is_done(root / names[item.path], item.path, analysis):
            planned.append(Planned(item, names[item.path], "skip"))
        else:
            planned.append(Planned(item, names[item.path], "run"))
    return planned


def result(path: str, name: str | None, status: str, seconds: float | None = None, error: str | None = None) -> dict:
    """One input's line of the index (:mod:`edx_live.scale.index`)."""
    return {"input": path, "session": name, "status": status, "seconds": seconds, "error": error}


# The task, in a worker process ----------------------------------------------------------------------


def _process(task: Task, out_dir: Path) -> dict:
    """The existing offline path for one input, into ``out_dir``."""
    from edx_live.shell import offline

    o = task.options
    if o.out_of_core:
        from edx_live.scale.lazy import process_out_of_core

        return process_out_of_core(task.path, out_dir, task.settings, chunk_mb=o.chunk_mb)
    if task.path.lower().endswith(RECORDING_SUFFIX):
        return offline.process_recording(task.path, out_dir, task.settings)
    return offline.process_file(task.path, out_dir, task.settings, frames=o.frames, chunk_pixels=o.chunk_pixels,
                                refit_every=o.refit_every, progress=False)


def _publish(partial: Path, final: Path, token: str) -> None:
    """Put the complete ``partial`` folder in the place of ``final`` (an older or half-written one is removed)."""
    old = final.with_name(f".{final.name}.old-{token}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def run_task(task: Task, log_format: str = "console", log_level: str = "info") -> dict:
    """Process one input into ``root/name`` and return its index line; never raises for the input's faults.

    Runs in a worker process: it configures the logs there the way the command does. The folder
    appears under its name only when complete (``input.json`` is written before the rename).
    """
    import warnings

    from edx_live.logs import QUIET_WARNINGS, configure

    configure(log_format, log_level)
    warnings.filterwarnings("ignore", message=QUIET_WARNINGS)
    root, token = Path(task.root), uuid.uuid4().hex[:8]
    partial = root / f".{task.name}.partial-{token}"
    t0 = time.perf_counter()
    try:
        if not os.path.isfile(task.path):
            raise FileNotFoundError(f"{task.path} does not exist or is not a file")
        summary = _process(task, partial)
        if not (partial / SUMMARY_FILE).is_file():
            raise RuntimeError(f"no {SUMMARY_FILE} was written")
        stamp = fingerprint(task.path, task.fingerprint.get("analysis", ""))
        if stamp != task.fingerprint:
            raise RuntimeError("the input changed while it was processed")
        (partial / INPUT_FILE).write_text(json.dumps(stamp, indent=2))
        _publish(partial, root / task.name, token)
    except Exception as exc:  # one input's fault: listed as failed, the others go on
        shutil.rmtree(partial, ignore_errors=True)
        seconds = round(time.perf_counter() - t0, 3)
        error = truncate(f"{type(exc).__name__}: {exc}", 500)
        log.error("input_failed", input=task.path, session=task.name, error=error,
                  where=truncate(traceback.format_exc(limit=-3), 1000))
        return result(task.path, task.name, "failed", seconds, error)
    seconds = round(time.perf_counter() - t0, 3)
    log.info("input_done", input=task.path, session=task.name, seconds=seconds,
             workflows=list(summary.get("workflows") or {}) if isinstance(summary, dict) else None)
    return result(task.path, task.name, "done", seconds)


# The run, on a client -----------------------------------------------------------------------------------


def task_settings(settings):
    """The settings a task runs with: ``[refit] parallel = "off"``.

    The inputs are what runs in parallel; a task does not start a segmentation process of its own
    (Dask's worker processes are daemons, which may not have children). The answers are the same.
    """
    return settings.model_copy(update={"refit": settings.refit.model_copy(update={"parallel": "off"})})


def tasks_of(planned: Sequence[Planned], root: str | Path, settings, options: Options) -> list[Task]:
    """The tasks of the inputs to run."""
    analysis, run_with = analysis_hash(settings, options), task_settings(settings)
    return [Task(p.input.path, str(root), p.name, options, run_with, fingerprint(p.input.path, analysis) or {})
            for p in planned if p.action == "run"]


def run_on(client, tasks: Sequence[Task], log_format: str, log_level: str,
           on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Submit every task to ``client``; call ``on_result`` as each finishes; return the results in task order.

    A task whose worker died (``KilledWorker``, a lost connection) is listed as failed with that error.
    """
    from distributed import as_completed

    futures = {}
    for task in tasks:
        key = f"edx-live-process-{task.name}-{uuid.uuid4().hex[:8]}"
        futures[client.submit(run_task, task, log_format, log_level, key=key, pure=False, retries=0)] = task
    results = {}
    for future in as_completed(futures):
        task = futures[future]
        try:
            r = future.result()
        except Exception as exc:  # the worker, not the input: the task function itself never raises
            r = result(task.path, task.name, "failed", None, truncate(f"{type(exc).__name__}: {exc}", 500))
            log.error("task_lost", input=task.path, session=task.name, error=r["error"])
        results[task.name] = r
        on_result(r)
    return [results[t.name] for t in tasks]


def process_many(patterns: Sequence[str], root: str | Path, settings, options: Options = Options(),
                 force: bool = False, client=None, cluster=None,
                 on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Process every input of ``patterns`` into ``root/<name>`` as Dask tasks; write the index; return its lines.

    Parameters
    ----------
    patterns : sequence of str
        Paths and globs (:func:`expand_inputs`).
    root : str or Path
        DIR: a session folder per input, ``index.json`` and ``index.csv``.
    settings : edx_live.config.Settings
    options : Options
    force : bool
        Process inputs already done too.
    client : distributed.Client, optional
        Run on it; else one made from ``cluster`` (:func:`edx_live.scale.cluster.dask_client`).
    cluster : edx_live.scale.cluster.ClusterOptions, optional
        Default: from ``settings.scale``.
    on_result : callable
        Called with each input's index line as it is known (skipped and failed ones first).
    """
    from .cluster import ClusterOptions, dask_client
    from .index import write_index

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    planned = plan(expand_inputs(patterns), root, settings, options, force)
    known = {}
    for p in planned:
        if p.action != "run":
            r = result(p.input.path, p.name, "skipped" if p.action == "skip" else "failed",
                       0.0 if p.action == "skip" else None, p.error)
            if p.action == "fail":
                log.error("input_failed", input=p.input.path, error=p.error)
            known[p.input.path] = r
            on_result(r)
    tasks = tasks_of(planned, root, settings, options)
    log.info("run_planned", root=str(root), inputs=len(planned), run=len(tasks),
             skipped=sum(p.action == "skip" for p in planned), failed=sum(p.action == "fail" for p in planned))
    if tasks:
        args = (settings.log_format, settings.log_level)
        if client is not None:
            ran = run_on(client, tasks, *args, on_result=on_result)
        else:
            with dask_client(cluster or ClusterOptions.from_settings(settings.scale)) as made:
                ran = run_on(made, tasks, *args, on_result=on_result)
        known.update({r["input"]: r for r in ran})
    results = [known[p.input.path] for p in planned]
    write_index(root, results)
    return results
