"""Weight-space interpolation of two checkpoints of one network (robust fine-tuning, Wortsman et al., CVPR 2022).

A network fine-tuned on new data (real nodules) gains there and may lose on what it knew (phantoms, our generator's
anatomy). Interpolating its weights with those it started from, ``(1 - alpha) * start + alpha * tuned``, often keeps
most of the gain and less of the loss; ``alpha`` is chosen on validation sets like any setting. Both checkpoints
must come from the same start (a fine-tuning of one from the other): interpolating unrelated trainings is
meaningless. Floating-point tensors are interpolated; any other entry (counters) is taken from ``tuned``.

Run as ``python -m pipelines.training.interpolate START TUNED OUT --alpha 0.5``; checkpoints are state dicts
(``model.pt``) or trainer checkpoints with a ``model`` entry, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

PathLike = str | Path


def read_state(path: PathLike) -> dict[str, torch.Tensor]:
    """The network's state dict in ``path`` (a ``model.pt``, or a trainer checkpoint's ``model`` entry)."""
    state: Any = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def interpolate(
    start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], *, alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * tuned`` per floating-point tensor; the same keys and shapes required."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if start.keys() != tuned.keys():
        odd = sorted(set(start) ^ set(tuned))
        raise ValueError(f"the checkpoints hold different tensors ({len(odd)} differ, e.g. {odd[:3]})")
    out = {}
    for key, b in tuned.items():
        a = start[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} against {tuple(b.shape)}")
        out[key] = torch.lerp(a.to(b.dtype), b, alpha) if b.is_floating_point() else b.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.training.interpolate", description=__doc__)
    p.add_argument("start", type=Path, help="the weights the fine-tuning started from")
    p.add_argument("tuned", type=Path, help="the fine-tuned weights")
    p.add_argument("out", type=Path, help="where to write the interpolated model.pt")
    p.add_argument("--alpha", type=float, required=True, help="0 = start, 1 = tuned")
    args = p.parse_args(argv)
    try:
        state = interpolate(read_state(args.start), read_state(args.tuned), alpha=args.alpha)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"interpolate: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out} (alpha {args.alpha:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
