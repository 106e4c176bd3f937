"""A Janus process of our own: a generated config dir, `janus -F DIR`, and its URLs.

    with JanusServer(JanusServerConfig()) as janus:
        print(janus.url, janus.ws_url)   # http://127.0.0.1:PORT/janus, ws://127.0.0.1:PORT

The config is written to a fresh 0700 temporary folder (removed on `stop()`):

- `janus.jcfg`: ICE only on the interfaces of `ice_enforce_list` (when given; Janus never uses a
  loopback interface), no STUN, no 1:1 NAT, a low log level, the optional `api_secret`, every
  plugin but the VideoRoom and every transport but HTTP and WebSockets disabled, no event
  handlers, no loggers, no admin API.
- `janus.plugin.videoroom.jcfg`: no static rooms (rooms are made at run time with a secret
  and a pin, `JanusSession.create_room`); the optional `admin_key` (then creating a room
  needs it).
- `janus.transport.http.jcfg`: plain HTTP on `host` and a free port (or `http_port`).
- `janus.transport.websockets.jcfg`: plain WebSockets on `host` and a free port (or `ws_port`),
  for browser pages (janus.js).

The server is up once `GET /janus/info` answers. Janus logs to `DIR/janus.log`; on a failed start
the error quotes its last lines.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PLUGIN = "libjanus_videoroom.so"
TRANSPORTS = ("libjanus_http.so", "libjanus_websockets.so")
LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu/janus",
    "/usr/lib/aarch64-linux-gnu/janus",
    "/usr/lib/janus",
    "/opt/janus/lib/janus",
)


class JanusServerError(RuntimeError):
    """The Janus process cannot start; the message says what to do."""


@dataclass(frozen=True)
class JanusServerConfig:
    """How to run Janus.

    Attributes:
        binary: the janus executable (a name on PATH or a path).
        host: the address the HTTP and WebSocket transports bind to.
        http_port: the HTTP transport's port (0: a free one).
        ws_port: the WebSocket transport's port (0: a free one).
        api_secret: every Janus API request must carry it (None: none needed).
        admin_key: creating a VideoRoom room needs it (None: anyone with the API may).
        ice_enforce_list: the interfaces (names or addresses, comma-separated) Janus gathers
            ICE candidates on (None: every interface but loopback, which Janus never uses).
        debug_level: Janus's log level, 0-7.
        session_timeout: seconds after which Janus drops a session nobody polls or keeps alive.
        lib_dir: the folder with Janus's plugins/ and transports/ (None: the packaged one).
        start_timeout: seconds to wait for `/janus/info` to answer.
    """

    binary: str = "janus"
    host: str = "127.0.0.1"
    http_port: int = 0
    ws_port: int = 0
    api_secret: str | None = None
    admin_key: str | None = None
    ice_enforce_list: str | None = None
    debug_level: int = 3
    session_timeout: int = 60
    lib_dir: Path | None = None
    start_timeout: float = 10.0


def free_port(host: str) -> int:
    """A TCP port nothing listens on now (another process may take it before Janus does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_lib_dir() -> Path:
    for candidate in LIB_DIRS:
        if (Path(candidate) / "plugins" / PLUGIN).is_file():
            return Path(candidate)
    raise JanusServerError(
        f"Janus's VideoRoom plugin ({PLUGIN}) is not in {', '.join(LIB_DIRS)}: install it "
        "(apt-get install janus) or set JanusServerConfig.lib_dir"
    )


def _q(text: str) -> str:
    """A libconfig string literal."""
    return json.dumps(text)


def _others(folder: Path, keep: tuple[str, ...]) -> str:
    """The comma-separated .so files of `folder` except `keep` (Janus's `disable` lists)."""
    names = sorted(p.name for p in folder.glob("*.so") if p.name not in keep) if folder.is_dir() else []
    return ",".join(names)


class JanusServer:
    """A Janus process with a generated config (see the module docstring); `stop()` ends it."""

    def __init__(self, config: JanusServerConfig | None = None) -> None:
        self.config = config or JanusServerConfig()
        self.dir: Path | None = None
        self.http_port = 0
        self.ws_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The Janus API over HTTP (what `JanusSession.open` takes)."""
        return f"http://{self.config.host}:{self.http_port}/janus"

    @property
    def ws_url(self) -> str:
        """The Janus API over WebSockets (subprotocol "janus-protocol"; what janus.js takes)."""
        return f"ws://{self.config.host}:{self.ws_port}"

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "janus.log"

    def write_config(self, folder: Path) -> None:
        """Write the four .jcfg files into `folder`."""
        c = self.config
        lib = c.lib_dir or find_lib_dir()
        secret = f"\tapi_secret = {_q(c.api_secret)}\n" if c.api_secret else ""
        enforce = f"\tice_enforce_list = {_q(c.ice_enforce_list)}\n" if c.ice_enforce_list else ""
        (folder / "janus.jcfg").write_text(
            "general: {\n"
            f"\tconfigs_folder = {_q(str(folder))}\n"
            f"\tplugins_folder = {_q(str(lib / 'plugins'))}\n"
            f"\ttransports_folder = {_q(str(lib / 'transports'))}\n"
            f"\tevents_folder = {_q(str(lib / 'events'))}\n"
            f"\tloggers_folder = {_q(str(lib / 'loggers'))}\n"
            f"\tdebug_level = {int(c.debug_level)}\n"
            f"\tsession_timeout = {int(c.session_timeout)}\n"
            f"{secret}"
            "\ttoken_auth = false\n"
            "}\n"
            "certificates: {\n}\n"
            "media: {\n}\n"
            "nat: {\n"
            "\tnice_debug = false\n"
            "\tfull_trickle = false\n"
            f"{enforce}"
            "}\n"
            f"plugins: {{\n\tdisable = {_q(_others(lib / 'plugins', (PLUGIN,)))}\n}}\n"
            f"transports: {{\n\tdisable = {_q(_others(lib / 'transports', TRANSPORTS))}\n}}\n"
            f"loggers: {{\n\tdisable = {_q(_others(lib / 'loggers', ()))}\n}}\n"
            "events: {\n\tbroadcast = false\n}\n"
        )
        admin = f"\tadmin_key = {_q(c.admin_key)}\n" if c.admin_key else ""
        (folder / "janus.plugin.videoroom.jcfg").write_text(f"general: {{\n{admin}}}\n")
        (folder / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '\tjson = "compact"\n\tbase_path = "/janus"\n\thttp = true\n'
            f"\tport = {self.http_port}\n\tip = {_q(c.host)}\n\thttps = false\n"
            "}\n"
            "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
            "cors: {\n}\n"
        )
        (folder / "janus.transport.websockets.jcfg").write_text(
            "general: {\n"
            '\tjson = "compact"\n\tws = true\n'
            f"\tws_port = {self.ws_port}\n\tws_ip = {_q(c.host)}\n\twss = false\n"
            "}\n"
            "admin: {\n\tadmin_ws = false\n\tadmin_wss = false\n}\n"
            "cors: {\n}\n"
        )

    def start(self) -> JanusServer:
        """Write the config, start Janus and wait until it answers; JanusServerError otherwise."""
        c = self.config
        binary = shutil.which(c.binary)
        if binary is None:
            raise JanusServerError(f"no Janus binary {c.binary!r} on this machine: install it: apt-get install janus")
        self.dir = Path(tempfile.mkdtemp(prefix="avatarcam-janus-"))  # mkdtemp makes it 0700
        self.http_port = c.http_port or free_port(c.host)
        self.ws_port = c.ws_port or free_port(c.host)
        self.write_config(self.dir)
        command = [binary, "-F", str(self.dir), "-o", "-N", "-L", str(self.log)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            if self.process.poll() is not None:
                raise JanusServerError(
                    f"janus exited with status {self.process.returncode} while starting; its log ends:\n{self._tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=1.0) as response:
                    if json.loads(response.read()).get("janus") == "server_info":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise JanusServerError(
                    f"janus did not answer at {self.url}/info within {self.config.start_timeout:g} s; "
                    f"its log ends:\n{self._tail()}"
                )
            time.sleep(0.05)

    def info(self) -> dict[str, object]:
        """What `GET /janus/info` answers (version, plugins, transports, local IP)."""
        with urllib.request.urlopen(f"{self.url}/info", timeout=2.0) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def stop(self) -> None:
        """End Janus (terminate, then kill after 5 s) and remove its config dir."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> JanusServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
