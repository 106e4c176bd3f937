"""Setup as a new user meets it: nothing needs root except what the README says (installing
Debian's browser, coturn and Xvfb), and without a browser the browser tests skip saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import ROOT, browser_paths, require_chromium

NOBODY = 65534


def _as_nobody() -> list[str]:
    """A command prefix that runs as an unprivileged user (empty when we already are one)."""
    if os.getuid() != 0:
        return []
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("running as root without setpriv (util-linux): cannot drop to an unprivileged user")
    return ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _readable_by_nobody(path: Path) -> bool:
    """Whether the unprivileged user can read `path` (a checkout under a private folder, such as
    a mktemp directory, is not)."""
    prefix = _as_nobody()
    if not prefix:
        return True
    done = subprocess.run([*prefix, "/usr/bin/test", "-r", str(path)], capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder the unprivileged user can use too (pytest's tmp_path is private)."""
    with tempfile.TemporaryDirectory(prefix="avatarcam-setup-") as folder:
        path = Path(folder)
        path.chmod(0o777)
        yield path


def _bare_path(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH folder with `id` and a fake `apt-get` that logs its calls, and nothing else: no
    chromium, chromedriver or turnserver. Readable by the unprivileged user."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt-get.log"
    (bin_dir / "id").symlink_to("/usr/bin/id")
    fake = bin_dir / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    bin_dir.chmod(0o755)
    return bin_dir, log


def _make_browser_setup(prefix: list[str], bin_dir: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "HOME": "/tmp", "LANG": "C"}
    command = [*prefix, "/usr/bin/make", "-s", "-C", str(folder), "browser-setup"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(not Path("/usr/bin/make").exists(), reason="no make here")
def test_browser_setup_needs_root_only_to_install_and_otherwise_says_why(shared_tmp: Path) -> None:
    bin_dir, log = _bare_path(shared_tmp)
    # The project's Makefile, copied where the unprivileged user can read it (the target needs
    # nothing else from the checkout).
    project = shared_tmp / "project"
    project.mkdir(mode=0o755)
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    (project / "Makefile").chmod(0o644)
    user = _make_browser_setup(_as_nobody(), bin_dir, project)
    assert user.returncode == 0, user.stderr
    assert "skipped, not root" in user.stdout and "CHROMIUM=" in user.stdout
    assert not log.exists(), "apt-get was run by an unprivileged user"
    if os.getuid() == 0:  # as root (CI) it installs the packages
        root = _make_browser_setup([], bin_dir, project)
        assert root.returncode == 0, root.stderr
        assert log.read_text().splitlines() == [
            "update",
            "install -y chromium chromium-driver coturn xvfb janus libjs-janus-gateway",
        ]


def test_no_browser_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CHROMEDRIVER", str(tmp_path / "no-chromedriver"))
    with pytest.raises(pytest.skip.Exception, match=r"no browser .* CHROMIUM= and CHROMEDRIVER="):
        require_chromium()


def test_configured_browser_is_the_one_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CHROMIUM", "CHROMEDRIVER"):
        tool = tmp_path / name.lower()
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
        monkeypatch.setenv(name, str(tool))
    assert browser_paths() == (tmp_path / "chromium", tmp_path / "chromedriver")


def test_browser_tests_skip_as_a_non_root_user_without_a_browser(shared_tmp: Path) -> None:
    """The browser test file itself, run by an unprivileged user with no browser: every test
    skips, with the reason, and none fails or builds an avatar first."""
    if not _readable_by_nobody(Path(sys.executable).resolve().parent) or not _readable_by_nobody(ROOT / "tests"):
        pytest.skip(f"{ROOT} or its virtualenv is not readable by an unprivileged user (a private parent folder)")
    tmp_path = shared_tmp
    env = {
        **os.environ,
        "CHROMIUM": str(tmp_path / "absent-chromium"),
        "CHROMEDRIVER": str(tmp_path / "absent-chromedriver"),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    command = [
        *_as_nobody(),
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "--basetemp",
        str(tmp_path / "pytest"),
        "tests/test_browser.py",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" not in done.stdout and "failed" not in done.stdout and "error" not in done.stdout.lower()
    assert "skipped" in done.stdout and "no browser for the page's tests" in done.stdout, done.stdout[-3000:]
