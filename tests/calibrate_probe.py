"""`avatarcam ARGS` for the browser tests, with one addition: each calibration a control asks
for prints `probe: session ID calibrated: True|False` (the session's numbers do not show one).

    python -m tests.calibrate_probe serve AVATAR --source webrtc ...
"""

from __future__ import annotations

import sys

import avatarcam_cli
from streamer.pipeline.session import AvatarSession


def main() -> int:
    calibrate = AvatarSession.calibrate

    async def reporting(self: AvatarSession) -> bool:
        done = await calibrate(self)
        print(f"probe: session {self.id} calibrated: {done}", flush=True)
        return done

    AvatarSession.calibrate = reporting  # type: ignore[method-assign]
    return avatarcam_cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
