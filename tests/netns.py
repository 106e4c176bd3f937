"""Where the cluster tests may run: inside a private network namespace that holds only `lo`
(`streamer.janus.netns` says why). `make test-cluster` makes that namespace (`unshare -n` as
root, `unshare -rn` otherwise) and runs the tests marked `cluster` in it.
"""

from __future__ import annotations

import pytest

from streamer.janus.netns import media_link, private_network

__all__ = ["media_link", "needs_private_network", "private_network"]

needs_private_network = pytest.mark.skipif(
    not private_network(),
    reason="cluster tests run only inside a private network namespace with just `lo`: "
    "run them with `make test-cluster` (unshare -n), which `make test` does",
)
