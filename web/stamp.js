// A frame identifier painted into the picture, for glass-to-glass latency.
//
// The same layout as the service's streamer/core/stamp.py: a row of CELLS square cells at the
// top-left, cell side cellSize(width); cell 0 white and cell 1 black (guards that set the
// threshold), cells 2.. hold BITS bits of the id, most significant first, white = 1.

export const BITS = 10;
export const CELLS = BITS + 2;
export const MODULUS = 1 << BITS;
export const MIN_CONTRAST = 80; // white guard minus black guard, in 8-bit levels

/** Cell side in pixels for a frame `width` pixels wide. */
export function cellSize(width) {
  return Math.max(4, Math.floor(width / 32));
}

/** Whether a frame of this size can carry a stamp. */
export function fits(width, height) {
  const c = cellSize(width);
  return height >= c && width >= CELLS * c;
}

/** Paint `tag` (mod 2**BITS) into the top-left of a 2D canvas context of the given width. */
export function write(ctx, width, tag) {
  const c = cellSize(width);
  const value = ((tag % MODULUS) + MODULUS) % MODULUS;
  for (let i = 0; i < CELLS; i++) {
    const bit = i === 0 ? 1 : i === 1 ? 0 : (value >> (BITS - 1 - (i - 2))) & 1;
    ctx.fillStyle = bit ? "#ffffff" : "#000000";
    ctx.fillRect(i * c, 0, c, c);
  }
}

/**
 * The stamp's id in an RGBA pixel strip, or null when there is no stamp.
 *
 * `rgba` holds the top-left `stripWidth` x `stripHeight` pixels of a frame `width` pixels
 * wide (ImageData.data of a drawImage of that region), with stripWidth >= CELLS * c and
 * stripHeight >= c. Each cell's level is the mean of R, G, B over the cell's central half,
 * as in streamer/core/stamp.py.
 */
export function read(rgba, stripWidth, stripHeight, width) {
  const c = cellSize(width);
  if (stripHeight < c || stripWidth < CELLS * c) return null;
  const q = Math.floor(c / 4);
  const levels = new Array(CELLS);
  for (let i = 0; i < CELLS; i++) {
    let sum = 0;
    let n = 0;
    for (let y = q; y < c - q; y++) {
      for (let x = i * c + q; x < (i + 1) * c - q; x++) {
        const k = (y * stripWidth + x) * 4;
        sum += rgba[k] + rgba[k + 1] + rgba[k + 2];
        n += 3;
      }
    }
    levels[i] = sum / n;
  }
  const white = levels[0];
  const black = levels[1];
  if (white - black < MIN_CONTRAST) return null;
  const mid = (white + black) / 2;
  let value = 0;
  for (let i = 0; i < BITS; i++) {
    if (levels[i + 2] > mid) value |= 1 << (BITS - 1 - i);
  }
  return value;
}

/** Read the stamp from what a <video> (or any CanvasImageSource) shows now, or null. */
export class StampReader {
  constructor() {
    this.canvas = document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
  }

  readFrom(source, width, height) {
    if (!width || !height || !fits(width, height)) return null;
    const c = cellSize(width);
    const w = CELLS * c;
    if (this.canvas.width !== w || this.canvas.height !== c) {
      this.canvas.width = w;
      this.canvas.height = c;
    }
    this.ctx.drawImage(source, 0, 0, w, c, 0, 0, w, c);
    return read(this.ctx.getImageData(0, 0, w, c).data, w, c, width);
  }
}
