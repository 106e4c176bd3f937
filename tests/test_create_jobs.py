"""The /create page's server side without HTTP: resumable uploads and their limits, the video
check, and the job queue (stages, consent, cancel, failures, restarts) run against a stand-in
for the avatarcam CLI. The real stages run end to end in tests/test_create_api.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from streamer.create import runner as runner_module
from streamer.create import upload as upload_module
from streamer.create.jobs import JobError, JobStore
from streamer.create.runner import Runner, prepare_progress, stage_error
from streamer.create.upload import NotAVideo, UploadError, Uploads, check_video

DEADLINE = 30.0  # seconds any awaited condition may take on a loaded 2-core machine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- uploads ---------------------------------------------------------------------------------------


def test_an_upload_resumes_from_what_arrived_and_refuses_a_wrong_offset(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "uploads", max_bytes=1000, reserve=0)
    upload = uploads.create(10, "video/webm")

    async def scenario() -> None:
        assert await uploads.put(upload, 0, b"0123") == 4
        with pytest.raises(UploadError) as wrong:
            await uploads.put(upload, 8, b"89")  # the page lost a chunk's answer and skipped ahead
        assert (wrong.value.status, wrong.value.received) == (409, 4)
        with pytest.raises(UploadError) as repeated:
            await uploads.put(upload, 0, b"0123")  # the page resent a chunk that had arrived
        assert repeated.value.received == 4
        with pytest.raises(UploadError, match="send the rest first") as early:
            uploads.complete(upload)
        assert early.value.status == 409
        assert await uploads.put(upload, 4, b"456789") == 10
        with pytest.raises(UploadError, match="more bytes than") as extra:
            await uploads.put(upload, 10, b"x")
        assert extra.value.status == 400

    asyncio.run(scenario())
    again = Uploads(tmp_path / "uploads")  # a restarted server finds the upload where it was
    path, declared = again.complete(upload)
    assert path.read_bytes() == b"0123456789"
    assert declared.type == "video/webm"
    assert mode(tmp_path / "uploads") == 0o700
    assert mode(path) == 0o600 and mode(path.with_suffix(".json")) == 0o600
    again.remove(upload)
    assert list((tmp_path / "uploads").iterdir()) == []


def test_upload_limits_and_bad_requests(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "uploads", max_bytes=1000, reserve=0)
    with pytest.raises(UploadError, match="over the") as big:
        uploads.create(1001, "video/webm")
    assert big.value.status == 413
    for expected in (0, -5, "10", True, None):
        with pytest.raises(UploadError) as bad:
            uploads.create(expected, "video/webm")
        assert bad.value.status == 400
    for upload in ("../../etc/passwd", "0123456789abcdef", ""):
        with pytest.raises(UploadError) as missing:
            uploads.received(upload)
        assert missing.value.status == 404


def test_a_full_disk_is_refused_with_a_clear_message_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(tmp_path / "uploads", max_bytes=10**9, reserve=100)
    free = {"bytes": 10**6}
    monkeypatch.setattr(upload_module, "free_bytes", lambda path: free["bytes"])
    with pytest.raises(UploadError, match="disk is too full") as full:
        uploads.create(10**6, "video/webm")  # the video and the reserve do not fit
    assert full.value.status == 507
    upload = uploads.create(1000, "video/webm")

    async def scenario() -> None:
        assert await uploads.put(upload, 0, b"a" * 500) == 500
        free["bytes"] = 10  # the disk fills while the page uploads
        with pytest.raises(UploadError, match="disk is too full") as during:
            await uploads.put(upload, 500, b"b" * 500)
        assert during.value.status == 507
        free["bytes"] = 10**6  # space freed: the upload goes on from where it stood
        assert uploads.received(upload) == 500
        assert await uploads.put(upload, 500, b"b" * 500) == 1000

    asyncio.run(scenario())


def test_only_a_decodable_video_passes(tmp_path: Path, cap12: Path) -> None:
    check_video(cap12)
    garbage = tmp_path / "recording.webm"
    garbage.write_bytes(os.urandom(20_000))
    with pytest.raises(NotAVideo, match="not a video") as refused:
        check_video(garbage)
    assert refused.value.status == 415
    text = tmp_path / "notes.webm"
    text.write_text("a shopping list\n" * 100)
    with pytest.raises(NotAVideo):
        check_video(text)


# ---- the job queue, against a stand-in CLI ----------------------------------------------------------

# Each stage does what the real one leaves on disk, quickly: prepare writes a manifest (or fails
# as prepare does on a video without a face), train appends progress, held-out lines and sample
# grids until its budget is spent and resumes from what it wrote, export and distill write the
# file they are asked for. Every call is appended to calls.jsonl beside the jobs.
FAKE_CLI = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    command = args[0]
    def option(name):
        return args[args.index(name) + 1]
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps({"args": args, "pid": os.getpid(), "cwd": os.getcwd()}) + "\\n")
    if command == "prepare":
        video = Path(args[1])
        if b"noface" in video.read_bytes():
            print(f"avatarcam: error: {video.name}: no face found in 30 frames; record your face", file=sys.stderr)
            sys.exit(2)
        out = Path(option("-o"))
        out.mkdir(parents=True, exist_ok=True)
        print("track video.webm:  50%|#####     | 15/30 [00:01<00:01]", file=sys.stderr, flush=True)
        (out / "manifest.json").write_text(json.dumps({"warnings": ["little head rotation"]}))
    elif command == "train":
        run = Path(option("-o"))
        (run / "logs").mkdir(parents=True, exist_ok=True)
        (run / "samples").mkdir(exist_ok=True)
        budget = float(option("--minutes")) * 60
        scalars = run / "logs" / "scalars.jsonl"
        step = len(scalars.read_text().splitlines()) if scalars.exists() else 0
        step_seconds = float(os.environ.get("FAKE_STEP", "0.05"))
        while step * step_seconds < budget:
            step += 1
            time.sleep(step_seconds)
            with scalars.open("a") as f:
                f.write(json.dumps({"step": step, "progress": min(step * step_seconds / budget, 1.0)}) + "\\n")
            if step % 5 == 0:
                (run / "samples" / f"step-{step:07d}.png").write_bytes(b"png")
                line = {"step": step, "seconds": step * step_seconds, "lpips": 0.5 / step, "baseline_lpips": 0.3}
                with (run / "logs" / "heldout.jsonl").open("a") as f:
                    f.write(json.dumps(line) + "\\n")
    elif command in ("export", "distill"):
        out = Path(option("-o"))
        source = Path(args[1])
        extra = {"subject": option("--subject"), "consent": option("--consent")} if command == "export" else {}
        previous = json.loads(source.read_text()) if command == "distill" else {}
        out.write_text(json.dumps({**previous, **extra, command: True}))
    """
)


class Published:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    async def __call__(self, path: Path) -> str:
        self.paths.append(path)
        return path.stem


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_avatarcam.py"
    script.write_text(FAKE_CLI)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setattr(runner_module, "CLI", (sys.executable, str(script)))
    monkeypatch.setattr(runner_module, "POLL", 0.05)
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    return calls


def calls(path: Path) -> list[list[str]]:
    return [json.loads(line)["args"] for line in path.read_text().splitlines()] if path.exists() else []


@asynccontextmanager
async def running(root: Path, published: Published, *, student: bool = True) -> AsyncIterator[Runner]:
    runner = Runner(JobStore(root), root / "avatars", published, student=student)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def recording(tmp_path: Path, name: str, content: bytes = b"a selfie video") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_a_job_runs_every_stage_and_publishes_the_avatar(tmp_path: Path, fake_cli: Path) -> None:
    root, published = tmp_path / "create", Published()

    async def scenario() -> dict[str, object]:
        async with running(root, published) as runner:
            job = runner.submit(recording(tmp_path, "upload.part"), ".webm", 0.01, "tiny", keep_video=False)
            assert runner.view(job)["position"] in (0, 1)
            runner.give_consent(job.id, "Ada Lovelace", "I agree to this avatar of me.", True)
            await until(lambda: job.state in ("done", "failed"), "the job to finish")
            return runner.view(job)

    view = asyncio.run(scenario())
    assert view["state"] == "done", view
    assert view["error"] is None and view["progress"] == 1.0 and view["position"] is None
    assert view["warnings"] == ["little head rotation"]
    points = view["checkpoints"]
    assert isinstance(points, list) and points and points[0]["baseline_lpips"] == 0.3
    assert [c[0] for c in calls(fake_cli)] == ["prepare", "train", "export", "distill"]
    train = calls(fake_cli)[1]
    assert train[train.index("--minutes") + 1] == "0.01" and "--resume" in train and "--heldout-frames" in train
    export = calls(fake_cli)[2]
    assert export[export.index("--subject") + 1] == "Ada Lovelace"
    (avatar,) = published.paths
    assert avatar.parent == root / "avatars" and view["avatar"] == avatar.stem
    assert json.loads(avatar.read_text()) == {
        "subject": "Ada Lovelace",
        "consent": "I agree to this avatar of me.",
        "export": True,
        "distill": True,
    }
    assert mode(avatar) == 0o600 and mode(root / "avatars") == 0o700
    folder = root / str(view["id"])
    assert mode(folder) == 0o700
    assert [p.name for p in folder.iterdir()] == ["job.json"]  # the recording and the work are gone
    assert mode(folder / "job.json") == 0o600


def test_training_waits_for_consent_and_frees_the_machine_meanwhile(tmp_path: Path, fake_cli: Path) -> None:
    root, published = tmp_path / "create", Published()

    async def scenario() -> None:
        async with running(root, published, student=False) as runner:
            first = runner.submit(recording(tmp_path, "a.part"), ".webm", 0.01, "tiny", keep_video=True)
            second = runner.submit(recording(tmp_path, "b.part"), ".mp4", 0.01, "tiny", keep_video=False)
            assert runner.view(second)["position"] in (1, 2)  # behind the first
            await until(lambda: first.state == "consent", "the first job to wait for consent")
            assert runner.view(first)["position"] is None
            await until(lambda: second.state == "consent", "the second job to train meanwhile")
            with pytest.raises(JobError, match="tick the box"):
                runner.give_consent(first.id, "Ada", "yes", False)
            with pytest.raises(JobError, match="non-empty"):
                runner.give_consent(first.id, " ", "yes", True)
            runner.give_consent(first.id, "Ada", "I agree.", True)
            await until(lambda: first.state == "done", "the first job to finish after consent")
            assert second.state == "consent"
            with pytest.raises(JobError, match="done already"):
                await runner.cancel(first.id)

    asyncio.run(scenario())
    assert [c[0] for c in calls(fake_cli)] == ["prepare", "train", "prepare", "train", "export"]  # no student
    kept = [p.name for p in root.glob("*/video.webm")]
    assert kept == ["video.webm"]  # keep_video: the first job's recording stays, nothing else of its work


def test_a_recording_without_a_face_fails_with_prepares_message(tmp_path: Path, fake_cli: Path) -> None:
    root, published = tmp_path / "create", Published()

    async def scenario() -> dict[str, object]:
        async with running(root, published) as runner:
            job = runner.submit(recording(tmp_path, "x.part", b"noface"), ".webm", 1.0, "tiny", keep_video=False)
            await until(lambda: job.state == "failed", "the job to fail")
            return runner.view(job)

    view = asyncio.run(scenario())
    assert view["error"] == "video.webm: no face found in 30 frames; record your face"
    assert str(view["stage"]).startswith("failed")
    assert published.paths == []
    assert [p.name for p in (root / str(view["id"])).iterdir()] == ["job.json"]


def test_cancel_ends_the_stage_process_and_cleans_up(
    tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, published = tmp_path / "create", Published()

    async def scenario() -> tuple[dict[str, object], int]:
        async with running(root, published) as runner:
            job = runner.submit(recording(tmp_path, "x.part"), ".webm", 10.0, "tiny", keep_video=False)
            await until(lambda: job.state == "training" and job.pid is not None and job.sample, "training")
            pid = job.pid
            assert pid is not None and runner.view(job)["position"] == 0
            await runner.cancel(job.id)
            await until(lambda: job.state == "cancelled", "the job to end")
            return runner.view(job), pid

    view, pid = asyncio.run(scenario())
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert view["position"] is None and published.paths == []
    assert [p.name for p in (root / str(view["id"])).iterdir()] == ["job.json"]


def test_a_restarted_server_resumes_training_and_ends_what_a_dead_one_left(
    tmp_path: Path, fake_cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, published = tmp_path / "create", Published()
    monkeypatch.setenv("FAKE_STEP", "0.1")

    async def first_server() -> tuple[str, int]:
        async with running(root, published) as runner:
            job = runner.submit(recording(tmp_path, "x.part"), ".webm", 0.03, "tiny", keep_video=False)
            runner.give_consent(job.id, "Ada", "I agree.", True)
            await until(lambda: len(job.checkpoints) >= 1, "a checkpoint")
            return job.id, len(job.checkpoints)
        # leaving the block stops the runner: the stage ends, the job stays "training"

    job_id, seen = asyncio.run(first_server())
    saved = json.loads((root / job_id / "job.json").read_text())
    assert saved["state"] == "training" and saved["pid"] is None

    # A server that died leaves its stage running: the next one must end it before resuming.
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], cwd=root / job_id, start_new_session=True
    )
    saved["pid"] = leftover.pid
    (root / job_id / "job.json").write_text(json.dumps(saved))

    async def second_server() -> dict[str, object]:
        async with running(root, published) as runner:
            job = runner.get(job_id)
            await until(lambda: job.state == "done", "the resumed job to finish")
            return runner.view(job)

    view = asyncio.run(second_server())
    assert leftover.wait(timeout=10) == -signal.SIGTERM  # ended by the second server, not left to run
    commands = [c[0] for c in calls(fake_cli)]
    assert commands == ["prepare", "train", "train", "export", "distill"]  # prepare is not run again
    steps = [int(c["step"]) for c in view["checkpoints"]]  # type: ignore[attr-defined]
    assert len(steps) > seen and steps == sorted(set(steps))  # continued, not started over


def test_requests_about_jobs_are_checked(tmp_path: Path, fake_cli: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path / "create", Published()) as runner:
            for minutes in (0, -1, "10", True, 10**6):
                with pytest.raises(JobError, match="minutes"):
                    runner.submit(recording(tmp_path, "x.part"), ".webm", minutes, "tiny", keep_video=False)
            with pytest.raises(JobError, match="preset"):
                runner.submit(recording(tmp_path, "x.part"), ".webm", 1, "huge", keep_video=False)
            for job_id in ("../etc", "0123456789ab"):
                with pytest.raises(JobError) as missing:
                    runner.get(job_id)
                assert missing.value.status == 404

    asyncio.run(scenario())


def test_stage_messages_and_prepare_progress(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    log.write_text("W0000 noise\ntrack v.webm:  40%|####  | 12/30 [00:01<00:01]\rtrack v.webm:  60%|###### | 18/30\n")
    assert prepare_progress(log) == pytest.approx(0.6)
    assert stage_error(log, "prepare", 1).startswith("prepare stopped with exit code 1: track v.webm:  60%")
    log.write_text("Traceback ...\navatarcam: error: the dataset is broken; re-run prepare\n")
    assert stage_error(log, "train", 2) == "the dataset is broken; re-run prepare"
    assert prepare_progress(tmp_path / "missing.log") == 0.0


def test_a_second_service_on_the_same_folder_takes_no_jobs(tmp_path: Path, fake_cli: Path) -> None:
    root = tmp_path / "create"

    async def scenario() -> None:
        async with running(root, Published()), running(root, Published()) as second:
            with pytest.raises(JobError, match="another avatarcam serve") as refused:
                second.submit(recording(tmp_path, "x.part"), ".webm", 1.0, "tiny", keep_video=False)
            assert refused.value.status == 503
        async with running(root, Published()) as alone:  # released when the first stopped
            assert alone.busy is None

    asyncio.run(scenario())
