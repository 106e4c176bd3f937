"""The invisible watermark: a keyed spread-spectrum pattern in the luma of every published frame.

Why this design (measured against `invisible-watermark` in benchmarks/bench_watermark.py; the
numbers are in docs/disclosure.md):

- **Payload.** 64 coded bits: a fixed 16-bit "synthetic" marker, a 32-bit digest of the avatar's
  identity record (subject, consent, source video, preset, steps) and a CRC-16 over both. The
  marker and the CRC make a decoded payload trustworthy (a random pattern passes both with
  odds near 2^-32); one or two unreliable bits are corrected by trying their flips against the CRC.
- **Pattern.** A 64 x 64 px tile of 16 x 16 "chips" (4 x 4 px flat blocks: what VP8 and H.264 keep
  best, their 4 x 4 transform's DC term). Each chip carries one bit times a keyed pseudo-random
  sign; each bit owns 4 chips per tile. The tile repeats over the frame, and the same pattern
  is on every frame (a static texture costs an inter-frame codec almost nothing to keep).
  It is added to R, G and B alike (a pure luma change, ±`AMPLITUDE` levels).
- **Cost.** The pattern for one payload and frame size is computed once; embedding is two
  saturating uint8 adds (OpenCV), a few tens of microseconds per 256 px frame.
- **Detection.** High-pass the luma (subtract a local mean), fold the frame onto one tile (sum
  all tiles, each weighted by the inverse of its own residual power, so smooth tiles where the
  codec kept the mark count more than busy ones), find the tile's shift by FFT cross-correlation
  with the marker's chips (so crops and side-by-side layouts work), then read each bit as a
  correlation. Across a video the folds are summed too, which decodes a file whose single
  frames are too degraded.

What it does not do: survive rescaling to another size (the tile's period changes), rotation,
or an attacker who averages many frames to estimate the static pattern and subtracts it. Its
key is public (this file), so anyone can also forge it; it is a disclosure signal, not proof.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


F32 = npt.NDArray[np.float32]


F64 = npt.NDArray[np.float64]


MARKER = 0x5359  # "SY": the fixed "synthetic" marker, the first 16 payload bits


MARKER_BITS = 16


DIGEST_BITS = 32


CRC_BITS = 16


BITS = MARKER_BITS + DIGEST_BITS + CRC_BITS  # 64 coded bits


CHIP = 4  # px: side of one flat chip


GRID = 16  # chips per tile side


TILE = CHIP * GRID  # 64 px


AMPLITUDE = 2  # luma levels added or subtracted


KEY = 0x41564154  # "AVAT": seeds the chip signs and the chip-to-bit assignment


HIGHPASS = 9  # px: the local mean subtracted before folding


NOISE_FLOOR = 2.0  # residual power (levels^2) below which a tile gains no more weight


Z_FOUND = 6.0  # the marker correlation's z-score a frame needs (besides marker + CRC)


CHASE = 8  # when the CRC fails, try flipping up to two of this many least reliable bits


def identity_digest(identity: Any) -> int:
    """The 32-bit digest of an avatar's identity record that the mark carries.

    `identity` is a `models.avatar.Identity` (or a dict with its fields). Measured metrics are
    left out: distilling a student adds metrics but depicts the same person on the same terms.
    """
    fields = identity if isinstance(identity, dict) else identity.__dict__
    record = {k: fields[k] for k in ("subject", "consent", "source_sha256", "preset", "steps")}
    text = json.dumps(record, sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


def _crc16(bits: npt.NDArray[np.uint8]) -> int:
    """CRC-16/CCITT (polynomial 0x1021, initial 0xFFFF) over a bit string, most significant first."""
    crc = 0xFFFF
    for bit in bits.tolist():
        top = ((crc >> 15) & 1) ^ bit
        crc = (crc << 1) & 0xFFFF
        if top:
            crc ^= 0x1021
    return crc


def _to_bits(value: int, width: int) -> npt.NDArray[np.uint8]:
    return np.array([(value >> (width - 1 - i)) & 1 for i in range(width)], np.uint8)


def _from_bits(bits: npt.NDArray[np.uint8]) -> int:
    return int("".join(str(int(b)) for b in bits), 2) if len(bits) else 0


def encode_payload(digest: int) -> npt.NDArray[np.uint8]:
    """marker | digest | CRC-16 as BITS bits (0/1)."""
    if not 0 <= digest < 1 << DIGEST_BITS:
        raise ValueError(f"the digest must fit in {DIGEST_BITS} bits, got {digest}")
    data = np.concatenate([_to_bits(MARKER, MARKER_BITS), _to_bits(digest, DIGEST_BITS)])
    return np.concatenate([data, _to_bits(_crc16(data), CRC_BITS)])


def check_payload(bits: npt.NDArray[np.uint8]) -> int | None:
    """The digest of a decoded codeword, or None when its marker or CRC is wrong."""
    data = bits[: MARKER_BITS + DIGEST_BITS]
    if _from_bits(bits[:MARKER_BITS]) != MARKER or _crc16(data) != _from_bits(bits[-CRC_BITS:]):
        return None
    return _from_bits(bits[MARKER_BITS : MARKER_BITS + DIGEST_BITS])


@dataclass(frozen=True)
class _Key:
    """The keyed layout: which bit each chip carries and with which sign."""

    bit_of_chip: npt.NDArray[np.int64]  # [GRID, GRID] in 0..BITS-1
    sign: npt.NDArray[np.int8]  # [GRID, GRID] +-1


def _key() -> _Key:
    rng = np.random.default_rng(KEY)
    bit_of_chip = np.empty(GRID * GRID, np.int64)
    bit_of_chip[rng.permutation(GRID * GRID)] = np.arange(GRID * GRID) % BITS
    sign = rng.choice(np.array([-1, 1], np.int8), GRID * GRID)
    return _Key(bit_of_chip.reshape(GRID, GRID), sign.reshape(GRID, GRID))


LAYOUT = _key()


def _chips(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.int8]:
    """[GRID, GRID] chip values (+-1) for a codeword."""
    symbols = (2 * bits.astype(np.int8) - 1)[LAYOUT.bit_of_chip]
    return np.asarray(symbols * LAYOUT.sign, np.int8)


def tile_pattern(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.int8]:
    """[TILE, TILE] the +-1 pattern of one tile (chips expanded to CHIP x CHIP px)."""
    return np.kron(_chips(bits), np.ones((CHIP, CHIP), np.int8))


class Watermarker:
    """Adds the mark for one avatar to frames of any size. Thread-safe after construction for a
    given frame size; caches the full-frame pattern per size.

    Args:
        digest: the avatar's `identity_digest`.
        amplitude: luma levels (1..8).
    """

    def __init__(self, digest: int, amplitude: int = AMPLITUDE) -> None:
        if not 1 <= amplitude <= 8:
            raise ValueError(f"amplitude must be 1..8 levels, got {amplitude}")
        self.digest = digest
        self.amplitude = amplitude
        self._tile = tile_pattern(encode_payload(digest))
        self._cache: dict[tuple[int, int], tuple[U8, U8]] = {}

    def _planes(self, height: int, width: int) -> tuple[U8, U8]:
        planes = self._cache.get((height, width))
        if planes is None:
            reps = (-(-height // TILE), -(-width // TILE))
            delta = np.tile(self._tile, reps)[:height, :width].astype(np.int16) * self.amplitude
            up = np.repeat(np.clip(delta, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            down = np.repeat(np.clip(-delta, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            planes = (np.ascontiguousarray(up), np.ascontiguousarray(down))
            self._cache[(height, width)] = planes
        return planes

    def __call__(self, frame: U8, *, inplace: bool = False) -> U8:
        """[H, W, 3] uint8 RGB -> the marked frame (a new array unless `inplace`)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"watermark expects [H, W, 3] uint8, got {frame.shape} {frame.dtype}")
        up, down = self._planes(frame.shape[0], frame.shape[1])
        if not frame.flags.c_contiguous:  # OpenCV wants contiguous arrays (a view of a batch is not)
            frame, inplace = np.ascontiguousarray(frame), True
        out = frame if inplace else np.empty(frame.shape, np.uint8)
        cv2.add(frame, up, dst=out)
        cv2.subtract(out, down, dst=out)
        return out


def luma(rgb: U8) -> F32:
    """BT.601 luma of an RGB frame, float32 [H, W]."""
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.float32)


def fold(y: F32) -> F64:
    """[H, W] luma -> [TILE, TILE]: the high-passed frame summed over its tiles (origin at 0, 0).

    Each tile is weighted by the inverse of its residual's variance (floored at NOISE_FLOOR), the
    best linear combination when the mark is the same in every tile and the content noise is
    not: a busy tile (hair, a real face beside the avatar) counts less than a smooth one.
    """
    residual = y - cv2.blur(y, (HIGHPASS, HIGHPASS), borderType=cv2.BORDER_REFLECT)
    h, w = residual.shape
    padded = np.zeros((-(-h // TILE) * TILE, -(-w // TILE) * TILE), np.float64)
    padded[:h, :w] = residual
    tiles = padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE)
    weights = 1.0 / np.maximum(np.mean(tiles**2, axis=(1, 3)), NOISE_FLOOR)
    return np.einsum("yaxb,yx->ab", tiles, weights)


def _marker_template() -> F64:
    """[TILE, TILE] the expected pattern over the marker's chips only (zero elsewhere)."""
    expected = tile_pattern(encode_payload(0)).astype(np.float64)
    is_marker = np.kron((LAYOUT.bit_of_chip < MARKER_BITS).astype(np.float64), np.ones((CHIP, CHIP)))
    return expected * is_marker


_TEMPLATE_FFT = np.conj(np.fft.rfft2(_marker_template()))


@dataclass(frozen=True)
class Reading:
    """What one frame (or a sum of frames) says.

    Attributes:
        found: the marker correlation is significant and the codeword passes marker + CRC.
        z: z-score of the marker correlation peak among all TILE x TILE shifts.
        snr: estimated chip amplitude over chip noise after alignment.
        digest: the decoded identity digest (None when marker or CRC fail).
        shift: (dy, dx) of the tile grid found.
        corrected: bits flipped to pass the CRC (0, 1 or 2).
        bit_z: per-bit reliabilities (signed z-scores), for combining.
    """

    found: bool
    z: float
    snr: float
    digest: int | None
    shift: tuple[int, int]
    corrected: int
    bit_z: F64 = field(repr=False)


def read_fold(folded: F64) -> Reading:
    """Decode one folded tile (from `fold`, or a sum of folds)."""
    corr = np.fft.irfft2(np.fft.rfft2(folded) * _TEMPLATE_FFT, s=folded.shape)
    peak = int(np.argmax(corr))
    dy, dx = divmod(peak, TILE)
    spread = float(np.std(corr))
    z = float((corr.flat[peak] - np.mean(corr)) / spread) if spread > 0 else 0.0
    aligned = np.roll(folded, (-dy, -dx), axis=(0, 1))
    chips = aligned.reshape(GRID, CHIP, GRID, CHIP).sum(axis=(1, 3)) * LAYOUT.sign
    soft = np.bincount(LAYOUT.bit_of_chip.ravel(), chips.ravel(), minlength=BITS)
    bits = (soft > 0).astype(np.uint8)
    expected = (2 * bits.astype(np.float64) - 1)[LAYOUT.bit_of_chip]
    amplitude = float(np.mean(chips * expected))
    noise = float(np.std(chips - amplitude * expected)) or 1e-9
    per_bit = GRID * GRID // BITS
    bit_z = soft / (noise * np.sqrt(per_bit))
    digest, corrected = _decode(bits, np.abs(bit_z))
    found = digest is not None and z >= Z_FOUND
    return Reading(found, z, amplitude / noise, digest, (dy, dx), corrected, bit_z)


def _decode(bits: npt.NDArray[np.uint8], reliability: F64) -> tuple[int | None, int]:
    """Check the codeword; if it fails, try flipping one or two of the least reliable bits."""
    digest = check_payload(bits)
    if digest is not None:
        return digest, 0
    weakest = np.argsort(reliability)[:CHASE]
    for i, a in enumerate(weakest):
        trial = bits.copy()
        trial[a] ^= 1
        if (digest := check_payload(trial)) is not None:
            return digest, 1
        for b in weakest[i + 1 :]:
            trial2 = trial.copy()
            trial2[b] ^= 1
            if (digest := check_payload(trial2)) is not None:
                return digest, 2
    return None, 0


def read_frame(rgb: U8) -> Reading:
    """Decode the mark of one RGB frame."""
    return read_fold(fold(luma(rgb)))


@dataclass(frozen=True)
class VideoReading:
    """What a whole video says.

    Attributes:
        frames: frames read.
        found: frames whose own reading found the mark.
        digests: digest -> number of frames that decoded it.
        combined: the reading of all frames' folds summed (one grid shift for the whole file).
    """

    frames: int
    found: int
    digests: dict[int, int]
    combined: Reading | None

    @property
    def fraction(self) -> float:
        return self.found / self.frames if self.frames else 0.0

    @property
    def digest(self) -> int | None:
        """The payload the file carries: the combined decode, else the most common frame decode."""
        if self.combined is not None and self.combined.found:
            return self.combined.digest
        return max(self.digests, key=lambda d: self.digests[d]) if self.digests else None


def read_lumas(lumas: Iterable[F32]) -> VideoReading:
    """Decode a sequence of luma frames (from `luma` or a decoder's gray plane)."""
    frames = found = 0
    digests: dict[int, int] = {}
    total: F64 | None = None
    for y in lumas:
        folded = fold(y)
        total = folded if total is None else total + folded
        reading = read_fold(folded)
        frames += 1
        if reading.found and reading.digest is not None:
            found += 1
            digests[reading.digest] = digests.get(reading.digest, 0) + 1
    combined = read_fold(total) if total is not None else None
    return VideoReading(frames, found, digests, combined)


def false_alarm_log10(reading: VideoReading) -> float:
    """log10 of a bound on the chance that an unmarked video this long reads as marked this often.

    One unmarked frame passes the 16-bit marker and the 16-bit CRC (with at most 1 + CHASE +
    CHASE*(CHASE-1)/2 corrections tried) with odds at most (1 + 36) * 2^-32, before even counting
    the z-score test; k of n frames, all passing: at most C(n, k) times that to the k.
    """
    tries = 1 + CHASE + CHASE * (CHASE - 1) // 2
    per_frame = np.log10(tries) - (MARKER_BITS + CRC_BITS) * np.log10(2)
    n, k = reading.frames, reading.found
    if k == 0:
        return 0.0
    from math import lgamma, log

    log_choose = (lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)) / log(10)
    return float(min(0.0, log_choose + k * per_frame))
