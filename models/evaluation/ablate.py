"""`avatarcam evaluate RUN --ablate`: the paper's ablation, without L_cos and without L_mrf.

Each variant is trained with the evaluated run's own options (its ``options.json``: data,
preset, batch, seed, device, loss overrides) plus one loss weight set to 0, for the same
number of steps, then self-reenacted on the same frames with the same metrics. When
`steps` differs from the run's own step count, the full model is retrained for `steps` too,
so every row of the table has seen the same training. A variant whose loss the run already
switched off is the full model again and is marked so instead of being trained twice.
Variant runs live in ``REPORT/ablation/<variant>/run`` and resume if interrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.evaluation.evaluate import PAPER, EvaluateOptions
from models.evaluation.evaluate import run as evaluate
from models.training import checkpoint as ckpt

VARIANTS: dict[str, tuple[str, ...]] = {"full": (), "w/o L_cos": ("cos",), "w/o L_mrf": ("mrf",)}
PAPER_ABLATION = {
    "full": PAPER["SelfieAvatar (paper, Table I)"],
    "w/o L_cos": {"ssim": 0.86, "psnr": 26.4, "lpips": 0.031, "fid": 16.6},
    "w/o L_mrf": {"ssim": 0.79, "psnr": 21.0, "lpips": 0.061, "fid": 26.7},
}
COLUMNS = ("psnr", "ssim", "lpips", "fid", "csim")


class AblateError(RuntimeError):
    """The ablation cannot run; the message says what to change."""


@dataclass(frozen=True)
class AblateOptions:
    """Options of `--ablate`.

    Attributes:
        evaluate: the evaluation every variant gets (its `source` must be a run folder).
        steps: training steps per variant (default: the run's own newest checkpoint step).
    """

    evaluate: EvaluateOptions
    steps: int | None = None


def _run_options(run: Path) -> dict[str, Any]:
    path = run / "options.json"
    if not run.is_dir() or not path.is_file():
        raise AblateError(f"--ablate needs a training run folder with options.json, got {run}")
    options: dict[str, Any] = json.loads(path.read_text())["options"]
    return options


def _weights(saved: dict[str, Any]) -> dict[str, float]:
    return {str(name): float(value) for name, value in saved.get("losses", [])}


def _train_variant(saved: dict[str, Any], out: Path, steps: int, zero: tuple[str, ...]) -> Path:
    """Train (or resume) one variant with the run's options and `zero` losses switched off."""
    from models.training.train import TrainOptions
    from models.training.train import run as train

    losses = {**_weights(saved), **dict.fromkeys(zero, 0.0)}
    latest = ckpt.latest(out)
    if latest is not None and ckpt.load(latest).step >= steps:
        return out
    options = TrainOptions(
        data=Path(saved["data"]),
        out=out,
        preset=str(saved["preset"]),
        steps=steps,
        batch=saved.get("batch"),
        device=str(saved.get("device", "auto")),
        seed=int(saved.get("seed", 0)),
        resume=latest is not None,
        checkpoint_every=min(int(saved.get("checkpoint_every", 500)), steps),
        sample_every=min(int(saved.get("sample_every", 250)), steps),
        max_frames=saved.get("max_frames"),
        losses=tuple(losses.items()),
    )
    train(options)
    return out


def run(options: AblateOptions) -> dict[str, Any]:
    """Train the variants, evaluate all three, write REPORT/ablation.{json,md} and metrics.json."""
    base = options.evaluate
    run_dir = base.source
    saved = _run_options(run_dir)
    latest = ckpt.latest(run_dir)
    if latest is None:
        raise AblateError(f"{run_dir} has no checkpoint; train it first")
    run_steps = ckpt.load(latest).step
    steps = options.steps or run_steps
    if steps < 1:
        raise AblateError("--ablate-steps must be positive")
    weights = _weights(saved)
    rows: dict[str, dict[str, Any]] = {}
    for variant, zero in VARIANTS.items():
        already_off = [name for name in zero if weights.get(name, 1.0) == 0.0]
        if zero and already_off:
            rows[variant] = {"same_as": "full", "note": f"the run already trains with {', '.join(already_off)}=0"}
            continue
        folder = base.out / "ablation" / variant.replace("/", "").replace(" ", "_")
        if variant == "full" and steps == run_steps:
            source = run_dir
        else:
            source = _train_variant(saved, folder / "run", steps, zero)
        result = evaluate(replace(base, source=source, out=folder / "report"))
        rows[variant] = {"steps": steps, "report": str(folder / "report" / "index.html")}
        rows[variant].update({k: result[k] for k in COLUMNS if k in result})
    for row in rows.values():
        if "same_as" in row:
            row.update({k: v for k, v in rows[row["same_as"]].items() if k in (*COLUMNS, "steps")})
    table = _markdown(rows, steps)
    summary: dict[str, Any] = {"steps": steps, "variants": rows, "paper": PAPER_ABLATION}
    (base.out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (base.out / "ablation.md").write_text(table)
    full_report = base.out / "ablation" / "full" / "report"
    if rows["full"].get("report") and (full_report / "metrics.json").is_file():
        metrics = json.loads((full_report / "metrics.json").read_text())
    else:
        metrics = json.loads((base.out / "metrics.json").read_text()) if (base.out / "metrics.json").is_file() else {}
    metrics["ablation"] = summary
    base.out.mkdir(parents=True, exist_ok=True)
    (base.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _index(base.out, table)
    return summary


def _markdown(rows: dict[str, dict[str, Any]], steps: int) -> str:
    head = "| variant | steps | " + " | ".join(COLUMNS) + " | paper (PSNR / SSIM / LPIPS / FID) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for variant, row in rows.items():
        values = " | ".join(f"{row[k]:.4g}" if k in row else "-" for k in COLUMNS)
        p = PAPER_ABLATION[variant]
        paper = f"{p['psnr']} / {p['ssim']} / {p['lpips']} / {p['fid']}"
        note = f" ({row['note']})" if "note" in row else ""
        lines.append(f"| {variant}{note} | {row.get('steps', steps)} | {values} | {paper} |")
    return "\n".join(lines) + "\n"


def _index(out: Path, table: str) -> None:
    """A small index.html for the ablation: the table and links to each variant's report."""
    import html

    body = "<pre>" + html.escape(table) + "</pre>"
    links = "".join(
        f"<li><a href='ablation/{p.name}/report/index.html'>{html.escape(p.name)}</a></li>"
        for p in sorted((out / "ablation").glob("*"))
        if (p / "report" / "index.html").is_file()
    )
    page = f"<!doctype html><meta charset='utf-8'><title>Ablation</title><h1>Ablation</h1>{body}<ul>{links}</ul>"
    (out / "index.html").write_text(page)
