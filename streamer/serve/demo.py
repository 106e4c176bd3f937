"""`avatarcam demo`: the shipped demo avatar, driven by the shipped clip, served to the page.

Both files live in `assets/demo/` with their sources and licenses in `assets/demo/NOTICE.md`.
The demo avatar's frames always carry the synthetic badge.
"""

from __future__ import annotations

from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP
from streamer.serve.config import ServeConfig
from streamer.sinks.base import SinkSpec
from streamer.sources.base import SourceError, SourceSpec


def demo_config(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    camera: int | None = None,
    browser_cameras: bool = False,
    virtualcam: bool = True,
    backend: str = "torch",
    device: str = "cpu",
) -> ServeConfig:
    """The embedded default: the shipped clip (or a webcam, or each browser's camera) drives
    the shipped avatar; the page always gets it, a virtual camera too when one exists."""
    for path in (DEMO_AVATAR, DEMO_CLIP):
        if not path.is_file():
            raise SourceError(f"{path} is missing: it is committed in assets/demo/; restore it with git checkout")
    sinks: tuple[SinkSpec, ...]
    if browser_cameras:
        source, sinks = SourceSpec("webrtc", ""), (SinkSpec("webrtc"),)
    else:
        source = SourceSpec("camera", str(camera)) if camera is not None else SourceSpec("file", str(DEMO_CLIP))
        sinks = (SinkSpec("webrtc"), SinkSpec("virtualcam")) if virtualcam else (SinkSpec("webrtc"),)
    return ServeConfig(
        avatars=(DEMO_AVATAR,),
        source=source,
        sinks=sinks,
        host=host,
        port=port,
        loop=True,
        backend=backend,
        device=device,
        badge_required=True,
        virtualcam_optional=True,
    )
