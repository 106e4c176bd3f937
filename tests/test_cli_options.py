"""Options in one place: `--config FILE` (TOML, keys are the long options) fills the same config
dataclasses as the command line, which wins; `--dry-run` prints the resolved config of every
command as JSON and starts nothing; secrets come from the command line, a file or the
environment, and are never printed. Fast: nothing is served and no model is loaded."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

import avatarcam_cli
from avatarcam_cli import main
from streamer.core.frames import Background
from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP
from streamer.serve.config import ServeConfig
from streamer.sinks.base import SinkSpec
from streamer.stages.framing import CameraSize

pytestmark = pytest.mark.skipif(
    not (DEMO_AVATAR.is_file() and DEMO_CLIP.is_file()), reason="the demo avatar and clip are not in this checkout"
)
SECRET_VARIABLES = ("AVATARCAM_TOKEN", "AVATARCAM_OPERATOR_TOKEN", "AVATARCAM_ICE_CREDENTIAL")


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs `serve`, `demo` and `connect` would start with; nothing is started."""
    configs: list[Any] = []

    def connect(config: Any) -> dict[str, Any]:
        configs.append(config)
        return {}

    monkeypatch.setattr("streamer.serve.http.run", configs.append)
    monkeypatch.setattr("streamer.connect.client.run", connect)
    monkeypatch.setattr("streamer.core.logs.configure_logging", lambda *args, **kwargs: None)
    return configs


@pytest.fixture(scope="module")
def own_avatar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An avatar that is not the demo's (its identity and a weight differ): one that may go unbadged."""
    data = bytearray(DEMO_AVATAR.read_bytes())
    at = data.index(b"cap12: the man") + len(b"cap1")
    data[at] = ord("9")
    size = int.from_bytes(data[:8], "little")
    texture = json.loads(data[8 : 8 + size])["static/texture"]["data_offsets"][0]
    data[8 + size + texture] ^= 0x01  # a weight of the neural texture
    path = tmp_path_factory.mktemp("own") / "own.avatar"
    path.write_bytes(bytes(data))
    return path


def _toml(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _serve(argv: list[str], started: list[Any]) -> ServeConfig:
    assert main(argv) == 0
    (config,) = started
    assert isinstance(config, ServeConfig)
    return config


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("avatarcam: error:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---- --config FILE ------------------------------------------------------------------------------


def test_config_file_fills_serve_config(tmp_path: Path, started: list[Any], own_avatar: Path) -> None:
    """Every kind of option from the file: positional, int, parsed size, repeatable, switch,
    choice, an inverted switch and a nested compose field."""
    out = tmp_path / "out.mp4"
    config_file = _toml(
        tmp_path / "serve.toml",
        f"""
avatar = [{str(own_avatar)!r}]
source = "file:{DEMO_CLIP}"
port = 8090
camera-size = "640x480"
camera-zoom = 0.75
sink = ["null", "file:{out}"]
loop = true
background = "blur"
no-badge = true
max-sessions = 3
allow-origin = "https://example.org"
admission = "limit"
""",
    )
    config = _serve(["serve", "--config", str(config_file)], started)
    assert config.avatars == (own_avatar,) and str(config.source) == f"file:{DEMO_CLIP}"
    assert config.port == 8090 and config.max_sessions == 3 and config.admission == "limit"
    assert config.framing.size == CameraSize(640, 480) and config.framing.zoom == 0.75
    assert config.sinks == (SinkSpec("null"), SinkSpec("file", str(out)))
    assert config.loop is True
    assert config.compose.background is Background.BLUR and config.compose.badge is False
    assert config.allowed_origins == ("https://example.org",)  # one value for a repeatable option
    assert config.host == "127.0.0.1" and config.fps == 30.0  # what the file leaves out keeps its default


def test_the_command_line_beats_the_file(tmp_path: Path, started: list[Any]) -> None:
    config_file = _toml(
        tmp_path / "serve.toml",
        f"""
avatar = ["{tmp_path / "absent.avatar"}"]
port = 8090
sink = ["null"]
camera-size = "640x480"
""",
    )
    out = tmp_path / "out.mp4"
    argv = ["serve", str(DEMO_AVATAR), "--config", str(config_file), "--port", "9000", "--sink", f"file:{out}"]
    config = _serve([*argv, "--source", f"file:{DEMO_CLIP}"], started)
    assert config.avatars == (DEMO_AVATAR,)  # the command line's positional, not the file's missing one
    assert config.port == 9000
    assert config.sinks == (SinkSpec("file", str(out)),)  # replaces the file's list, is not added to it
    assert config.framing.size == CameraSize(640, 480)  # the file still gives what the command line does not


def test_connect_and_demo_read_a_config_file_too(tmp_path: Path, started: list[Any]) -> None:
    connect_file = _toml(tmp_path / "connect.toml", f'url = "http://127.0.0.1:9/"\nvideo = "{DEMO_CLIP}"\nfps = 24\n')
    assert main(["connect", "--config", str(connect_file), "--sink", "null"]) == 0
    demo_file = _toml(tmp_path / "demo.toml", "port = 8099\nno-virtualcam = true\n")
    assert main(["demo", "--config", str(demo_file)]) == 0
    connect, demo = started
    assert connect.url == "http://127.0.0.1:9/" and connect.video == DEMO_CLIP and connect.fps == 24.0
    assert connect.camera is None and connect.sinks == (SinkSpec("null"),)
    assert demo.port == 8099 and demo.sinks == (SinkSpec("webrtc"),) and demo.badge_required


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 8090", "unknown key 'prot': not an option of `avatarcam serve`; did you mean 'port'?"),
        ("camera_size = '640x480'", "unknown key 'camera_size'"),
        ("port = 'eighty'", "key 'port': invalid int value: 'eighty'"),
        ("port = [8090]", "key 'port': expected a string or a number"),
        ("codec = 'av1'", "key 'codec': invalid choice: 'av1'"),
        ("loop = 'yes'", "key 'loop': expected true or false"),
        ("sink = [['null']]", "key 'sink': expected a string or a number"),
        ("config = 'other.toml'", "unknown key 'config'"),
        ("port = ", "not a TOML file"),
    ],
)
def test_a_bad_config_file_ends_with_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config_file = _toml(tmp_path / "serve.toml", text + "\n")
    assert main(["serve", str(DEMO_AVATAR), "--config", str(config_file), "--dry-run"]) == 2
    line = _one_error(capsys)
    assert f"avatarcam: error: {config_file}: " in line and message in line


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--config", str(tmp_path / "absent.toml"), "--dry-run"]) == 2
    assert f"--config {tmp_path / 'absent.toml'}: No such file" in _one_error(capsys)


# ---- --dry-run ----------------------------------------------------------------------------------

A, D = str(DEMO_AVATAR), str(DEMO_CLIP)
DRY_RUNS: dict[str, tuple[list[str], str, Any]] = {  # command: (arguments, a key, its value)
    "serve": ([A, "--source", f"file:{D}", "--camera-size", "640x480"], "framing", {"size": "640x480"}),
    "demo": (["--port", "8091"], "port", 8091),
    "connect": (["http://127.0.0.1:9/", "--video", D, "--sink", "null"], "sinks", ["null"]),
    "bench": ([A, "--video", D, "--frames", "7"], "frames", 7),
    "reenact": (["{own}", D, "-o", "{tmp}/o.mp4", "--no-watermark"], "watermark", False),  # refused for the demo
    "evaluate": ([A, "--video", D, "-o", "{tmp}/r", "--region", "full"], "regions", ["full"]),
    "export": (
        ["{tmp}/run", "-o", "{tmp}/a.avatar", "--data", "{tmp}", "--subject", "me", "--consent", "yes"],
        "subject",
        "me",
    ),
    "distill": ([A, "--data", "{tmp}", "-o", "{tmp}/s.avatar", "--steps", "5"], "steps", 5),
    "prepare": ([D, "-o", "{tmp}/data", "--size", "128"], "size", 128),
    "train": (["{tmp}", "-o", "{tmp}/run", "--preset", "tiny"], "options", {"preset": "tiny"}),
    "devices": (["--probe"], "probe", True),
    "detect": ([D, "--json"], "files", [D]),
    "gateway": ([A, "--ray-address", "10.0.0.1:6379", "--avatar-path"], "ray_address", "10.0.0.1:6379"),
    "node": (["--address", "10.0.0.1:6379", "--streams", "3"], "streams", 3),
}


def test_every_command_has_config_and_dry_run() -> None:
    parser = avatarcam_cli.build_parser()
    (commands,) = (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands) == set(DRY_RUNS)
    for command in commands.values():
        assert {"--config", "--dry-run"} <= set(command._option_string_actions)


@pytest.mark.parametrize("command", sorted(DRY_RUNS))
def test_dry_run_prints_the_resolved_config_as_json_and_starts_nothing(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any], own_avatar: Path
) -> None:
    arguments, key, value = DRY_RUNS[command]
    arguments = [a.replace("{tmp}", str(tmp_path)).replace("{own}", str(own_avatar)) for a in arguments]
    assert main([command, *arguments, "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    if isinstance(value, dict):
        assert value.items() <= printed[key].items()
    else:
        assert printed[key] == value
    assert started == [] and list(tmp_path.iterdir()) == []  # nothing served, connected or written


def test_dry_run_prints_what_resolved_makes_of_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The validated config: the backend chosen for the device, a generated (masked) operator
    token; and an invalid one is refused as without --dry-run."""
    assert main(["serve", A, "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backend"] == "onnx" and printed["operator_token"] == "***" and printed["token"] is None
    assert printed["source"] == "webrtc" and printed["sinks"] == ["webrtc"] and printed["avatars"] == [A]
    assert main(["serve", A, "--max-per-client", "0", "--dry-run"]) == 2
    assert "max_per_client must be >= 1" in _one_error(capsys)


# ---- secrets ------------------------------------------------------------------------------------


def test_secrets_from_the_environment_and_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    for name in SECRET_VARIABLES:
        monkeypatch.setenv(name, f"{name.lower()}-value")
    config = _serve(["serve", A, "--host", "0.0.0.0"], started)
    assert config.token == "avatarcam_token-value"
    assert config.operator_token == "avatarcam_operator_token-value"
    assert config.ice_credential == "avatarcam_ice_credential-value"
    capsys.readouterr()
    assert main(["serve", A, "--host", "0.0.0.0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert printed["token"] == printed["operator_token"] == printed["ice_credential"] == "***"
    assert "-value" not in out


def test_a_secret_file_is_read_stripped_and_a_shared_one_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    private = _toml(tmp_path / "token", "from-a-file\n")
    config = _serve(["serve", A, "--token-file", str(private)], started)
    assert config.token == "from-a-file"
    assert "warning" not in capsys.readouterr().err
    shared = _toml(tmp_path / "ice", "  turn-secret \n", mode=0o644)
    assert main(["connect", "http://127.0.0.1:9/", "--video", D, "--ice-credential-file", str(shared)]) == 0
    assert started[-1].ice_credential == "turn-secret"
    if os.name == "posix":
        assert f"{shared} holds --ice-credential and other users may read it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command_line", "environment", "expected"),
    [
        (["--token-file", "{file}"], "from-env", "from-token-file"),
        (["--token", "from-flag"], "from-env", "from-flag"),
        ([], "from-env", "from-env"),
        ([], None, "from-config"),
    ],
)
def test_secret_precedence_command_line_then_environment_then_config_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: list[Any],
    command_line: list[str],
    environment: str | None,
    expected: str,
) -> None:
    token_file = _toml(tmp_path / "token", "from-token-file")
    config_file = _toml(tmp_path / "serve.toml", f'avatar = ["{A}"]\ntoken = "from-config"\n')
    if environment is not None:
        monkeypatch.setenv("AVATARCAM_TOKEN", environment)
    argv = [a.replace("{file}", str(token_file)) for a in command_line]
    assert _serve(["serve", "--config", str(config_file), *argv], started).token == expected


def test_connect_url_token_beats_the_environment(monkeypatch: pytest.MonkeyPatch, started: list[Any]) -> None:
    monkeypatch.setenv("AVATARCAM_TOKEN", "from-env")
    for url, flags, expected in [
        ("http://127.0.0.1:9/?token=from-url", [], "from-url"),
        ("http://127.0.0.1:9/?token=from-url", ["--token", "from-flag"], "from-flag"),
        ("http://127.0.0.1:9/", [], "from-env"),
    ]:
        assert main(["connect", url, "--video", D, "--sink", "null", *flags]) == 0
        assert started[-1].token == expected


def test_connect_dry_run_masks_the_url_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "http://127.0.0.1:9/?token=s3cret&x=1", "--video", D, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["url"] == "http://127.0.0.1:9/?token=***&x=1" and "s3cret" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token", "a", "--token-file", "{file}"], "give --token or --token-file, not both"),
        (["--operator-token-file", "{tmp}/absent"], "--operator-token-file {tmp}/absent: No such file"),
        (["--token-file", "{empty}"], "is empty"),
    ],
)
def test_bad_secret_options_end_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    files = {
        "{file}": str(_toml(tmp_path / "t", "x")),
        "{empty}": str(_toml(tmp_path / "e", "\n")),
        "{tmp}": str(tmp_path),
    }

    def filled(text: str) -> str:
        for placeholder, value in files.items():
            text = text.replace(placeholder, value)
        return text

    assert main(["serve", A, *map(filled, argv), "--dry-run"]) == 2
    assert filled(message) in _one_error(capsys)


def test_a_config_file_holding_a_secret_that_others_may_read_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = _toml(tmp_path / "serve.toml", 'operator-token = "op-secret"\n', mode=0o644)
    assert main(["serve", A, "--config", str(config_file), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "op-secret" not in captured.out and json.loads(captured.out)["operator_token"] == "***"
    if os.name == "posix":
        assert f"{config_file} holds a secret and other users may read it" in captured.err


# ---- the mapper ---------------------------------------------------------------------------------


class _Reading(argparse.Namespace):
    """Records which options a command reads."""

    read: set[str]

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name != "read":
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", A, "--source", f"file:{D}", "--dry-run"],
        ["demo", "--dry-run"],
        ["connect", "http://127.0.0.1:9/", "--video", D, "--dry-run"],
    ],
)
def test_every_option_reaches_the_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The mapper fills fields by name: an option whose name matches no field (and that the
    command does not map by hand) would be dropped without a word. Only logging is read later."""
    args = avatarcam_cli._parse(argv)
    args.__class__ = _Reading
    args.read = set()
    assert args.handler(args) == 0
    json.loads(capsys.readouterr().out)
    unread = set(vars(args)) - args.read - {"read", "command", "handler", "config", "dry_run"}
    assert {name for name in unread if not name.endswith("_file")} <= {"log_format", "log_level"}
