"""A frame identifier painted into the picture, for glass-to-glass latency.

WebRTC does not carry application data with each video frame, so the page paints a counter
into the top-left corner of each camera frame before sending it; the service reads it, keeps it
with the frame through every stage, and paints it onto the avatar frame it sends back. The page
reads it off the displayed frame and subtracts the time it painted it.

Layout (the page's `web/stamp.js` writes and reads the same): a row of CELLS square cells at
the top-left, cell side `cell_size(width)`; cell 0 is white and cell 1 black (guards that set
the threshold), cells 2.. hold BITS bits of the id, most significant first, white = 1. Cells are
big and flat, so they survive video compression.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]

BITS = 10
CELLS = BITS + 2
MODULUS = 1 << BITS
MIN_CONTRAST = 80  # white guard minus black guard, in 8-bit luma


def cell_size(width: int) -> int:
    """Cell side in pixels for a frame `width` pixels wide."""
    return max(4, width // 32)


def write(image: U8, tag: int) -> None:
    """Paint `tag` (mod 2**BITS) into `image` ([H, W, 3] uint8 RGB) in place."""
    c = cell_size(image.shape[1])
    if image.shape[0] < c or image.shape[1] < CELLS * c:
        raise ValueError(f"image {image.shape} is too small for a frame stamp")
    value = tag % MODULUS
    bits = [1, 0] + [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    for i, bit in enumerate(bits):
        image[:c, i * c : (i + 1) * c] = 255 if bit else 0


def read(image: U8) -> int | None:
    """The stamp's id in `image` ([H, W, 3] uint8 RGB), or None when there is no stamp."""
    c = cell_size(image.shape[1])
    if image.shape[0] < c or image.shape[1] < CELLS * c:
        return None
    q = c // 4
    row = image[q : c - q, : CELLS * c].astype(np.float32).mean(axis=(0, 2))  # [CELLS * c]
    cells = row.reshape(CELLS, c)[:, q : c - q].mean(axis=1)  # [CELLS] mean level of each centre
    white, black = cells[0], cells[1]
    if white - black < MIN_CONTRAST:
        return None
    bits = cells[2:] > (white + black) / 2
    return int(sum(int(b) << (BITS - 1 - i) for i, b in enumerate(bits)))
