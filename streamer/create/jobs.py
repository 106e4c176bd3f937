"""Jobs that turn an uploaded recording into an avatar, kept on disk.

Each job is a folder `<root>/<id>/` (0700) holding `job.json` (0600, rewritten atomically on every
change of state), the recording, and while it runs the prepared dataset (`data/`), the training
run (`run/`) and the stages' logs (`logs/`). A server that stops or dies finds its jobs again
there on the next start (`JobStore.load_all`). The finished avatar leaves the folder for the
avatars folder (`<root>/avatars/`); what stays of a finished job is its `job.json`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.networks.presets import PRESETS
from streamer.core.files import write_atomic
from streamer.create.upload import private_dir
from tracking.assets import cache_dir

QUEUED, PREPARING, TRAINING, CONSENT = "queued", "preparing", "training", "consent"
EXPORTING, DISTILLING, DONE, FAILED, CANCELLED = "exporting", "distilling", "done", "failed", "cancelled"
RUNNING = (PREPARING, TRAINING, EXPORTING, DISTILLING)  # a stage process works on the job
FINISHED = (DONE, FAILED, CANCELLED)
JOB_ID = re.compile(r"[0-9a-f]{12}")

STAGE_WORDS = {
    QUEUED: "waiting for the machine",
    PREPARING: "tracking your face in the recording",
    TRAINING: "training your avatar",
    CONSENT: "waiting for consent",
    EXPORTING: "writing the avatar file",
    DISTILLING: "making the fast CPU version",
    DONE: "ready: switch to it",
    FAILED: "failed",
    CANCELLED: "cancelled",
}

MAX_SECONDS = 180  # the longest recording the page asks for (the brief: 1-3 minutes)
MAX_MINUTES = 24 * 60.0  # the longest training budget a job may ask for


PUBLIC = (
    "id", "state", "stage", "progress", "eta_s", "minutes", "preset", "checkpoints", "sample", "warnings", "error",
    "avatar", "consent_given", "created",
)  # fmt: skip


class JobError(Exception):
    """A request about a job that is refused; `status` is the HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_root() -> Path:
    """Where uploads (`uploads/`), jobs (`<id>/`) and finished avatars (`avatars/NAME.avatar`)
    live by default: `<cache>/create`, the cache being $AVATARCAM_HOME, else ~/.cache/avatarcam."""
    return cache_dir().parent / "create"


def suggestion(cuda: bool) -> tuple[str, float]:
    """(preset, minutes) for this machine: the product's targets, a usable avatar in 10 minutes on
    one GPU at 256 px, a sharp one in 60 minutes on 2 CPU cores (`cpu-256`)."""
    return ("256", 10.0) if cuda else ("cpu-256", 60.0)


def slug(text: str) -> str:
    """A file-name-safe short form of a person's name ("Ada Lovelace" -> "ada-lovelace")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "avatar"


@dataclass
class Job:
    """One recording on its way to an avatar. `PUBLIC` names the page's view (the JSON of
    GET /api/create/jobs/{id}, with `position` added); the rest is the runner's."""

    id: str
    state: str
    minutes: float
    preset: str
    stage: str = STAGE_WORDS[QUEUED]
    progress: float = 0.0
    eta_s: float | None = None
    checkpoints: list[dict[str, float]] = field(default_factory=list)
    sample: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    avatar: str | None = None
    consent_given: bool = False
    created: str = ""
    # the runner's own
    video: str = ""  # the recording's file name in the job folder ("" once deleted)
    keep_video: bool = False
    subject: str = ""
    consent: str = ""
    student: bool = False  # distil a CPU student after the export
    prepared: bool = False  # prepare finished (a restart goes on with train)
    pid: int | None = None  # the running stage's process (its own process group)
    queued_at: float = 0.0

    def set_state(self, state: str, stage: str | None = None) -> None:
        self.state = state
        self.stage = stage or STAGE_WORDS[state]

    def view(self, position: int | None) -> dict[str, Any]:
        """The job as the page sees it (the contract's job JSON)."""
        return {**{name: getattr(self, name) for name in PUBLIC}, "position": position}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(Job)}
        return Job(**{k: v for k, v in data.items() if k in known})


class JobStore:
    """The jobs folder: one owner-only folder per job, its `job.json` written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise JobError(404, f"no job {job_id[:40]!r}")
        return self.root / job_id

    def new(self, minutes: float, preset: str, keep_video: bool, student: bool) -> Job:
        if preset not in PRESETS:
            raise JobError(400, f"preset must be one of {sorted(PRESETS)}")
        job_id = secrets.token_hex(6)
        private_dir(self.folder(job_id))
        created = datetime.now(UTC).isoformat(timespec="seconds")
        job = Job(job_id, QUEUED, minutes, preset, created=created, keep_video=keep_video, student=student)
        job.queued_at = time.time()
        return job

    def save(self, job: Job) -> None:
        write_atomic(self.folder(job.id) / "job.json", json.dumps(asdict(job), indent=1).encode(), 0o600)

    def load_all(self) -> list[Job]:
        """Every job found on disk, oldest first; unreadable ones are skipped."""
        jobs = []
        for path in sorted(self.root.glob("*/job.json")):
            try:
                jobs.append(Job.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(jobs, key=lambda j: j.queued_at)

    def clean(self, job: Job) -> None:
        """Remove everything of a finished job but its job.json (and the recording when kept)."""
        folder = self.folder(job.id)
        for path in folder.iterdir():
            if path.name == "job.json" or (job.keep_video and path.name == job.video):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not job.keep_video:
            job.video = ""
