"""The job queue: one job at a time on this machine, each stage a process of avatarcam's own CLI.

A job goes queued -> preparing (`avatarcam prepare`) -> training (`avatarcam train --minutes N
--resume --heldout-frames 8`) -> consent (only while nobody has given it; the machine is free
for the next job meanwhile) -> exporting (`avatarcam export --subject --consent`) -> distilling
(`avatarcam distill`, when the live service runs on a CPU: the real-time tier needs the student)
-> done, and the avatar is handed to `publish` (the live service loads it). Stages run as child
processes in their own process group, niced: the service's event loop and its live sessions are
not blocked, and cancelling kills the whole group. Progress is read from what train writes:
`logs/scalars.jsonl` (the fraction of the budget used), `samples/step-N.png` and
`logs/heldout.jsonl` (held-out LPIPS and the mean-frame baseline at each checkpoint).

A server that stops ends the running stage and leaves the job as it was; the next start runs
it again from where it stood (prepare keeps its finished frames, train resumes from its newest
checkpoint). A process left behind by a server that died is found by its working directory and
ended first. One service at a time runs a jobs folder (a lock file in it): a second one started
on the same folder refuses new jobs, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.create.jobs import (
    CANCELLED,
    CONSENT,
    DISTILLING,
    DONE,
    EXPORTING,
    FAILED,
    FINISHED,
    MAX_MINUTES,
    PREPARING,
    QUEUED,
    RUNNING,
    TRAINING,
    Job,
    JobError,
    JobStore,
    slug,
)
from streamer.create.upload import private_dir

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "avatarcam_cli")
POLL = 1.0  # seconds between reads of a running stage's progress
NICE = 10  # stages yield the cores to the live sessions
STOP_GRACE = 5.0  # seconds a stage has to exit after SIGTERM before SIGKILL
HELDOUT_FRAMES = 8  # test frames of the held-out LPIPS at each checkpoint
MAX_TEXT = 4000  # characters of a subject's name or consent statement


@dataclass(frozen=True)
class Plan:
    """How a preset's job runs its stages.

    Attributes:
        size: `prepare --size`: the preset's image size.
        checkpoint_every: `train --checkpoint-every`: a resume loses at most this many steps, and
            each checkpoint adds a point to the held-out LPIPS curve.
        sample_every: `train --sample-every`: how often the page's sample strip changes.
        distill_steps, distill_eval: `distill --steps` and `--eval-frames`.
        train_args: more `avatarcam train` options.
    """

    size: int
    checkpoint_every: int
    sample_every: int
    distill_steps: int
    distill_eval: int
    train_args: tuple[str, ...] = ()


QUICK_LOSSES = ("--loss", "mrf=0", "--loss", "cos=0", "--loss", "gan_g=0", "--loss", "gan_d=0")
"""tiny is for tests: L1 and mask only, as tests/conftest.py's tiny avatar (the loss networks
would take most of its steps' time)."""

PLANS = {
    "tiny": Plan(64, 10, 5, 40, 8, QUICK_LOSSES),
    "cpu-256": Plan(256, 100, 50, 1200, 50),
    "256": Plan(256, 500, 250, 1200, 50),
    "512": Plan(512, 500, 250, 1200, 50),
}


class StageFailed(Exception):
    """A stage process ended with an error; the message is the stage's own."""


class Cancelled(Exception):
    """The job was cancelled while a stage ran."""


Publish = Callable[[Path], Awaitable[str]]


class Runner:
    """The queue of one machine.

    Args:
        store: the jobs folder.
        avatars: where finished avatars go (NAME.avatar).
        publish: loads a finished avatar into the live service; returns its name there.
        student: distil a CPU student after the export (the service runs on a CPU).
    """

    def __init__(self, store: JobStore, avatars: Path, publish: Publish, *, student: bool) -> None:
        self.store = store
        self.avatars = avatars
        self.publish = publish
        self.student = student
        self.jobs: dict[str, Job] = {}
        self.current: Job | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._cancelled: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: int | None = None
        self.busy: str | None = None  # why this service takes no jobs (another one runs this folder's)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Find the jobs on disk, end processes a dead server left behind, load finished avatars,
        and start working."""
        private_dir(self.store.root)
        self._lock = os.open(self.store.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.busy = (
                f"another avatarcam serve makes the avatars of {self.store.root}; use that one, or start this "
                "one with its own --create-dir"
            )
            log.warning("create: %s", self.busy)
            return
        for job in await asyncio.to_thread(self.store.load_all):
            self.jobs[job.id] = job
            if job.pid is not None:
                await asyncio.to_thread(end_leftover, job.pid, self.store.folder(job.id))
                job.pid = None
            if job.state == DONE and job.avatar:
                path = self.avatars / f"{job.avatar}.avatar"
                try:
                    await self.publish(path)
                except Exception as exc:  # a deleted or damaged file: the job says so
                    log.warning("job %s: cannot load its avatar %s: %s", job.id, path, exc)
        self._task = asyncio.get_running_loop().create_task(self._work(), name="create-jobs")

    async def stop(self) -> None:
        """End the running stage and leave its job to resume on the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._lock is not None:
            os.close(self._lock)  # releases the folder to the next service
            self._lock = None

    # ---- requests ------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        self.store.folder(job_id)  # validates the id
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(404, f"no job {job_id!r}; it may have been made on another server")
        return job

    def waiting(self) -> list[Job]:
        """Jobs waiting for the machine, in the order they will get it."""
        resumed = [j for j in self.jobs.values() if j.state in RUNNING and j is not self.current]
        consented = [j for j in self.jobs.values() if j.state == CONSENT and j.consent_given]
        queued = [j for j in self.jobs.values() if j.state == QUEUED]
        return [*resumed, *consented, *queued]

    def position(self, job: Job) -> int | None:
        """0: running; n: n-th in line; None: finished or waiting for consent."""
        if job.state in FINISHED or job.state == CONSENT:
            return None
        if job is self.current:
            return 0
        line = self.waiting()
        return line.index(job) + 1 if job in line else None

    def view(self, job: Job) -> dict[str, Any]:
        return job.view(self.position(job))

    def views(self) -> list[dict[str, Any]]:
        return [self.view(j) for j in sorted(self.jobs.values(), key=lambda j: j.queued_at)]

    def submit(self, video: Path, suffix: str, minutes: object, preset: str, keep_video: bool) -> Job:
        """Queue a job for the finished upload `video` (moved into the job's folder)."""
        if self.busy is not None:
            raise JobError(503, self.busy)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes <= MAX_MINUTES:
            raise JobError(400, f"minutes must be a number of minutes > 0 and <= {MAX_MINUTES:.0f}")
        if preset not in PLANS:
            raise JobError(400, f"preset must be one of {sorted(PLANS)}")
        job = self.store.new(float(minutes), preset, keep_video, self.student)
        job.video = f"video{suffix}"
        os.replace(video, self.store.folder(job.id) / job.video)
        self.jobs[job.id] = job
        self.store.save(job)
        self._wake.set()
        log.info("job %s queued: %s, %g minutes", job.id, preset, minutes)
        return job

    def give_consent(self, job_id: str, subject: object, consent: object, agree: object) -> Job:
        job = self.get(job_id)
        if job.state in FINISHED or job.state in (EXPORTING, DISTILLING):
            raise JobError(409, f"the job is {job.state}; consent can be given only before the export")
        if agree is not True:
            raise JobError(400, "tick the box: the person shown must agree to this avatar being made")
        for name, text in (("subject", subject), ("consent", consent)):
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                raise JobError(400, f"{name} must be a non-empty text of at most {MAX_TEXT} characters")
        assert isinstance(subject, str) and isinstance(consent, str)
        job.subject, job.consent, job.consent_given = subject.strip(), consent.strip(), True
        self.store.save(job)
        self._wake.set()
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state in FINISHED:
            raise JobError(409, f"the job is {job.state} already")
        if job is self.current:
            self._cancelled.add(job.id)
            job.stage = "cancelling"
            if self._process is not None:
                await terminate(self._process)
            return job
        job.set_state(CANCELLED)  # at once: the queue must not start it while its folder is cleaned
        await self._finish(job, CANCELLED)
        return job

    def sample(self, job_id: str) -> Path | None:
        """The newest sample grid of the job's training run."""
        folder = self.store.folder(self.get(job_id).id) / "run" / "samples"
        grids = sorted(folder.glob("step-*.png")) if folder.is_dir() else []
        return grids[-1] if grids else None

    # ---- the work ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            line = self.waiting()
            if not line:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self.current = line[0]
            try:
                await self._advance(job)
            except Cancelled:
                await self._finish(job, CANCELLED)
            except StageFailed as exc:
                job.error = str(exc)
                await self._finish(job, FAILED)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job %s failed", job.id)
                job.error = f"the server failed at this step ({type(exc).__name__}: {exc}); see its log"
                await self._finish(job, FAILED)
            finally:
                self.current = None
                job.pid = None
                self._cancelled.discard(job.id)
                with contextlib.suppress(OSError):
                    self.store.save(job)

    async def _advance(self, job: Job) -> None:
        """Run the job's stages from where it stands until it is done or waits for consent."""
        folder = self.store.folder(job.id)
        plan = PLANS[job.preset]
        data, run = folder / "data", folder / "run"
        if job.state in (QUEUED, PREPARING):
            self._enter(job, PREPARING)
            await self._stage(job, "prepare", ["prepare", folder / job.video, "-o", data, "--size", plan.size])
            manifest = json.loads((data / "manifest.json").read_text())
            job.warnings = [str(w) for w in manifest.get("warnings", [])]
            job.prepared = True
        if job.state in (PREPARING, TRAINING):
            self._enter(job, TRAINING)
            train = ["train", data, "-o", run, "--preset", job.preset, "--minutes", job.minutes, "--resume"]
            every = ["--checkpoint-every", plan.checkpoint_every, "--sample-every", plan.sample_every]
            heldout = ["--heldout-frames", HELDOUT_FRAMES]
            await self._stage(job, "train", [*train, *every, *heldout, *plan.train_args])
            self._read_training(job)
            job.progress, job.eta_s = 1.0, None
            if not job.consent_given:
                self._enter(job, CONSENT)
                return
        name = f"{slug(job.subject)}-{job.id[:6]}"
        teacher, student = folder / "export" / f"{name}.avatar", folder / "student" / f"{name}.avatar"
        if job.state in (TRAINING, CONSENT, EXPORTING):
            self._enter(job, EXPORTING)
            private_dir(teacher.parent)
            consent = ["--subject", job.subject, "--consent", job.consent]
            await self._stage(job, "export", ["export", run, "--data", data, "-o", teacher, *consent])
        made = teacher
        if job.student:
            self._enter(job, DISTILLING)
            private_dir(student.parent)
            steps = ["--steps", plan.distill_steps, "--eval-frames", plan.distill_eval]
            await self._stage(job, "distill", ["distill", teacher, "--data", data, "-o", student, *steps])
            made = student
        private_dir(self.avatars)
        final = self.avatars / f"{name}.avatar"
        os.replace(made, final)
        os.chmod(final, 0o600)
        job.avatar = await self.publish(final)
        await self._finish(job, DONE)

    def _enter(self, job: Job, state: str) -> None:
        if job.id in self._cancelled:
            raise Cancelled
        job.set_state(state)
        job.progress = 0.0 if state != TRAINING else job.progress
        self.store.save(job)
        log.info("job %s: %s", job.id, state)

    async def _finish(self, job: Job, state: str) -> None:
        await asyncio.to_thread(self.store.clean, job)  # before the state changes: a finished job is a clean one
        job.set_state(state, f"failed: {job.error}" if state == FAILED else None)
        job.eta_s = None
        job.progress = 1.0 if state == DONE else job.progress
        self.store.save(job)
        log.info("job %s: %s%s", job.id, state, f" ({job.error})" if job.error else "")

    async def _stage(self, job: Job, name: str, args: list[Any]) -> None:
        """Run `avatarcam ARGS` for the job and wait for it; StageFailed with the stage's own
        message when it fails, Cancelled when the job was cancelled meanwhile."""
        folder = self.store.folder(job.id)
        log_path = private_dir(folder / "logs") / f"{name}.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                *CLI,
                *map(str, args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=folder,
                env=stage_environment(),
                start_new_session=True,  # its own process group: cancel ends it and its children
            )
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, NICE)
        self._process, job.pid = process, process.pid
        self.store.save(job)
        poll = asyncio.get_running_loop().create_task(self._poll(job, name, log_path))
        try:
            code = await process.wait()
        except asyncio.CancelledError:  # the server stops: end the stage, keep the job's state
            await terminate(process)
            raise
        finally:
            poll.cancel()
            self._process, job.pid = None, None
        if job.id in self._cancelled:
            raise Cancelled
        if code != 0:
            raise StageFailed(stage_error(log_path, name, code))

    async def _poll(self, job: Job, name: str, log_path: Path) -> None:
        while True:
            await asyncio.sleep(POLL)
            if name == "train":
                before = len(job.checkpoints)
                await asyncio.to_thread(self._read_training, job)
                if len(job.checkpoints) != before:
                    self.store.save(job)
            elif name == "prepare":
                job.progress = await asyncio.to_thread(prepare_progress, log_path)

    def _read_training(self, job: Job) -> None:
        run = self.store.folder(job.id) / "run"
        progress = last_progress(run / "logs" / "scalars.jsonl")
        if progress is not None:
            job.progress = progress
            job.eta_s = round((1 - progress) * job.minutes * 60, 1)
        elif job.eta_s is None:
            job.eta_s = job.minutes * 60
        job.checkpoints = read_checkpoints(run / "logs" / "heldout.jsonl")
        samples = run / "samples"
        job.sample = samples.is_dir() and any(samples.glob("step-*.png"))


# ---- stage processes ------------------------------------------------------------------------------


def stage_environment() -> dict[str, str]:
    """The service's environment, with this checkout first on the path (the stages run the same
    avatarcam as the service that started them), and one core fewer than this process may use
    for their thread pools unless the environment says otherwise: the live sessions keep a core,
    and on a shared CPU a pool that waits on a busy core spins instead of working (a tiny
    training step measured 12 s with 2 threads and 0.9 s with 1 on a loaded 2-core machine)."""
    env = dict(os.environ)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = str(max(1, cores - 1))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the stage's process group, SIGKILL after STOP_GRACE seconds."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def end_leftover(pid: int, folder: Path) -> None:
    """End the stage process `pid` if it still runs in `folder` (a server died and left it: it
    would write beside the resumed stage). A pid reused by another program is left alone."""
    try:
        if Path(f"/proc/{pid}/cwd").resolve() != folder.resolve():
            return
    except OSError:  # gone, or not Linux
        return
    log.info("ending stage process %d left behind in %s", pid, folder)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _tail(path: Path, size: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def stage_error(log_path: Path, name: str, code: int) -> str:
    """The stage's own error message (the CLI's `avatarcam: error: ...` line), else its last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", _tail(log_path)) if line.strip()]
    for line in reversed(lines):
        if line.startswith("avatarcam: error: "):
            return line.removeprefix("avatarcam: error: ")
    last = lines[-1] if lines else "no output"
    return f"{name} stopped with exit code {code}: {last[:500]}"


def last_progress(scalars: Path) -> float | None:
    """The fraction of the budget used, from the last line of train's logs/scalars.jsonl."""
    for line in reversed(_tail(scalars, 8192).splitlines()):
        try:
            return float(json.loads(line)["progress"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def read_checkpoints(heldout: Path) -> list[dict[str, float]]:
    """[{"step", "seconds", "lpips", "baseline_lpips"}] of each checkpoint so far."""
    points = []
    with contextlib.suppress(OSError):
        for line in heldout.read_text().splitlines():
            try:
                row = json.loads(line)
                points.append({k: row[k] for k in ("step", "seconds", "lpips", "baseline_lpips")})
            except (ValueError, KeyError, TypeError):
                continue
    return points


TQDM = re.compile(r"track [^:]*:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def prepare_progress(log_path: Path) -> float:
    """The fraction of frames prepare has tracked, from its progress bar (tracking is most of it)."""
    found = TQDM.findall(_tail(log_path, 16 * 1024))
    if not found:
        return 0.0
    done, total = found[-1]
    return min(int(done) / max(int(total), 1), 1.0)
