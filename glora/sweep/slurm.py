"""The Slurm backend, through submitit: one job array per stage, dependencies between the arrays.

Jobs of one kind that wait for the same kinds of jobs form one array (supernets; searches; baselines'
training, which waits for nothing; retrains, which wait for searches; exports), with
``--array=0-N%P`` (P: --slurm-parallelism). An array waits for the arrays it depends on with
``afterany``, and each task checks, with the CLIs' own rule, that its own dependencies finished
before it calls its CLI, so a failed supernet stops only the jobs that need it. Each task is the
same CLI call as locally (``--resume auto``), its output appended to the same log. When Slurm warns
of a time limit or pre-emption (submitit's USR2), the task tells its CLI to save (SIGINT) and
submitit requeues it, so it continues where it stopped.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from glora.errors import GLoRAError, OutputError, one_line
from glora.sweep.jobs import IMPORT_ROOT, KINDS, Job, finished
from glora.sweep.local import append_line, launch
from glora.sweep.plan import PlanError
from glora.sweep.queue import WAITING_CODES, in_queue, queued, read_record, write_record
from glora.sweep.status import FAILED_MARK, Board, last_line

DEFAULT_TIME_MIN = 1440
POLL_S = 2.0
GRACE_S = 30.0


class NodeCall:
    """One array task on a compute node: check the dependencies, run the CLI, fail loudly.

    A thread waits for the CLI; the task's main thread waits for that thread's event. submitit's
    time-limit hook runs in the main thread, interrupting that wait, so it must not wait on the
    process itself (``Popen.wait`` holds a lock the interrupted wait already has): it stops the CLI
    and waits for the same event.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.exited: threading.Event | None = None  # made on the node (submitit pickles this object)

    def __call__(self, job: Job, deps: list[Job]) -> str:
        self.exited = threading.Event()
        for dep in deps:  # afterany starts this task whatever became of them
            try:
                ready = finished(dep)
            except GLoRAError as err:  # finished with other settings, or made from a changed input
                self._fail(job, f"not run: needs {dep.name}: {one_line(err)}")
            if not ready:
                self._fail(job, f"not run: needs {dep.name}, which did not finish (log {dep.log})")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # USR2 waits until the waiter runs, so the hook always finds a CLI and an event to wait on.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        try:
            try:
                self.proc, log = launch(job, env, preexec_fn=_cli_ignores_usr2)
            except OutputError as err:
                self._fail(job, str(err))
            threading.Thread(target=self._wait, daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        self.exited.wait()
        log.close()
        rc = self.proc.returncode
        done = finished(job) if rc == 0 else None
        if not done:
            self._fail(job, f"exit {rc}: {last_line(job.log)}" if rc else "exited 0 but its outputs are incomplete")
        return done

    def _wait(self) -> None:
        self.proc.wait()
        self.exited.set()

    @staticmethod
    def _fail(job: Job, reason: str) -> None:
        append_line(job.log, FAILED_MARK + reason)
        raise RuntimeError(reason)

    def checkpoint(self, job: Job, deps: list[Job]):
        """submitit's hook on a time limit or pre-emption: let the CLI save, then requeue this call."""
        import submitit  # an optional extra: only a Slurm task gets here

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)  # the CLI saves its state and exits
            except ProcessLookupError:
                pass
            self.exited.wait()
        return submitit.helpers.DelayedSubmission(NodeCall(), job, deps)


def _cli_ignores_usr2() -> None:
    """In the CLI's process: USR2 (Slurm's warning, sent to every process of the task) is ignored;
    the task turns it into SIGINT, on which the CLI saves."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})


def arrays(jobs: dict[str, Job]) -> list[tuple[str, list[Job], list[str]]]:
    """(label, jobs, labels of the arrays it waits for) per array, in submission order."""
    todo = [j for j in jobs.values() if j.state == "waiting"]
    groups: dict[tuple[str, tuple[str, ...]], list[Job]] = {}
    for job in todo:
        waits = tuple(sorted({jobs[d].kind for d in job.deps if jobs[d].state == "waiting"},
                             key=KINDS.index))
        groups.setdefault((job.kind, waits), []).append(job)
    order = sorted(groups, key=lambda k: (KINDS.index(k[0]), len(k[1])))
    label = {k: k[0] + (f" (after {', '.join(k[1])})" if k[1] else "") for k in order}
    out = []
    for key in order:
        names = {d for j in groups[key] for d in j.deps}
        after = [label[o] for o in order if o != key and any(j.name in names for j in groups[o])]
        out.append((label[key], groups[key], after))
    return out


def parameters(args) -> dict:
    """submitit's SlurmExecutor parameters from the --slurm-* options."""
    params = {"time": args.slurm_time or DEFAULT_TIME_MIN, "job_name": "glora-sweep",
              "setup": [f"export PYTHONPATH={IMPORT_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
                        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"],
              "additional_parameters": {"chdir": os.getcwd()}}
    for option, key in (("partition", "partition"), ("gpus", "gpus_per_node"), ("cpus", "cpus_per_task"),
                        ("parallelism", "array_parallelism"), ("account", "account")):
        if getattr(args, f"slurm_{option}") is not None:
            params[key] = getattr(args, f"slurm_{option}")
    if args.slurm_mem is not None:
        params["mem"] = f"{args.slurm_mem:g}GB"
    return params


def describe(jobs: dict[str, Job], args) -> None:
    """The arrays a submission would make (for --dry-run)."""
    params = {k: v for k, v in parameters(args).items() if k not in ("setup", "additional_parameters")}
    print(f"slurm: {', '.join(f'{k}={v}' for k, v in params.items())}")
    for label, group, after in arrays(jobs):
        print(f"slurm array {label}: {len(group)} task(s)" + (f", afterany: {'; '.join(after)}" if after else ""))


class SlurmBackend:
    """Submit the waiting jobs as arrays (not those still queued from an earlier submission); by
    default wait for them all, showing their states."""

    def __init__(self, args, runs: Path, board: Board | None = None):
        self.args, self.runs, self.board = args, runs, board
        self.stop = False

    def adopt(self, jobs: dict[str, Job]) -> dict[str, dict]:
        """The waiting jobs an earlier sweep submitted that are still queued or running: marked so,
        and not submitted again."""
        live = in_queue({n: j for n, j in jobs.items() if j.state == "waiting"}, self.runs)
        for name, (slurm_id, code) in live.items():
            jobs[name].state = "queued" if code in WAITING_CODES else "running"
            jobs[name].note = f"slurm {slurm_id}"
        if live:
            ids = sorted({i.split("_")[0] for i, _ in live.values()})
            print(f"slurm: {len(live)} job(s) already queued or running (arrays {' '.join(ids)}); "
                  "not submitted again")
        record = read_record(self.runs)
        return {name: record[name] for name in live}

    def submit(self, jobs: dict[str, Job], live: dict[str, dict]) -> dict[str, dict]:
        """Submit the waiting jobs; job name -> {"id", "stderr", "result"} of each, also recorded in RUNS."""
        try:
            import submitit
        except ImportError:
            raise PlanError("--backend slurm needs submitit (pip install -r requirements.txt)") from None
        groups = arrays(jobs)
        if groups and shutil.which("sbatch") is None:
            raise PlanError("--backend slurm: sbatch not found (run the sweep where Slurm's commands are)")
        executor = submitit.SlurmExecutor(folder=self.runs.resolve() / ".submitit" / "%j")
        submitted, ids = {}, {}
        for label, group, after in groups:
            params = parameters(self.args)
            # After the arrays it needs, and after the tasks of earlier submissions it needs.
            earlier = sorted({live[d]["id"] for j in group for d in j.deps if d in live})
            if after or earlier:
                params["additional_parameters"] = {**params["additional_parameters"],
                                                   "dependency": "afterany:" + ":".join([ids[a] for a in after] + earlier)}
            executor.update_parameters(**params)
            try:
                handles = executor.map_array(NodeCall(), group, [[jobs[d] for d in j.deps] for j in group])
            except submitit.core.utils.FailedJobError as err:
                lines = [line for line in str(err).splitlines() if line.strip()]
                before = f" (submitted before it: {' '.join(ids.values())})" if ids else ""
                raise PlanError(f"sbatch refused the {label} array: {lines[-1] if lines else err}{before}") from None
            ids[label] = handles[0].job_id.split("_")[0]
            print(f"slurm: submitted array {ids[label]} ({label}: {len(group)} task(s))")
            entries = {j.name: {"id": h.job_id, "stderr": str(h.paths.stderr), "result": str(h.paths.result_pickle)}
                       for j, h in zip(group, handles)}
            submitted.update(entries)
            try:
                write_record(self.runs, entries)
            except OutputError as err:
                raise OutputError(f"{err}; arrays {' '.join(ids.values())} are submitted and run (scancel stops "
                                  "them), but a rerun cannot tell they are queued") from None
        return submitted

    def _on_signal(self, signum, frame) -> None:
        self.stop = True

    def run(self, jobs: dict[str, Job]) -> bool:
        """Submit, then wait (unless --slurm-no-wait); True unless the wait was interrupted."""
        live = self.adopt(jobs)
        pending = {**live, **self.submit(jobs, live)}
        if self.args.slurm_no_wait or not pending:
            return True
        board = self.board or Board(jobs)
        for name in live:
            if jobs[name].state == "running":
                board.start(jobs[name], f"slurm {live[name]['id']}")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        gone: dict[str, float] = {}  # job name -> when it left the queue without a result yet
        try:
            while pending and not self.stop:
                states = queued()
                for name, entry in list(pending.items()) if states is not None else []:
                    if self._over(jobs[name], entry, states.get(entry["id"]), gone, board):
                        del pending[name]
                board.refresh()
                time.sleep(POLL_S)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            board.close()
        if self.stop:
            ids = sorted({entry["id"].split("_")[0] for entry in pending.values()})
            print(f"slurm: stopped waiting; the jobs keep running (scancel {' '.join(ids)} stops them); "
                  "run the sweep again to see them finish")
        return not self.stop

    @staticmethod
    def _over(job: Job, entry: dict, code: str | None, gone: dict[str, float], board: Board) -> bool:
        """Collect a job once it has left Slurm's queue; True when it is collected.

        While Slurm lists it (queued, running, requeued by ``scontrol requeue`` or after a time
        limit), it is not over, whatever a result file of an earlier attempt says."""
        if code is not None:
            gone.pop(job.name, None)
            if code not in WAITING_CODES and job.state != "running":
                board.start(job, f"slurm {entry['id']}")
            return False
        left = gone.setdefault(job.name, time.time())
        try:
            note = finished(job)
        except Exception as err:  # noqa: BLE001 - e.g. stale or other settings: this job's failure
            board.finish(job, "failed", f"{type(err).__name__}: {err}")
            return True
        if note:
            board.finish(job, "done")
            return True
        # A shared file system may show the outputs a little after the job ends.
        if not Path(entry.get("result", "")).is_file() and time.time() - left < GRACE_S:
            return False
        blocked = next((d for d in job.deps if d in board.jobs and board.jobs[d].state != "done"), None)
        if blocked is not None:
            board.finish(job, "skipped", f"needs {blocked} ({board.jobs[blocked].state})")
            return True
        reason = last_line(job.log).removeprefix(FAILED_MARK) if job.log.is_file() else ""
        board.finish(job, "failed", reason or f"no result from Slurm job {entry['id']}; see {entry['stderr']}")
        return True
