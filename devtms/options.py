"""Command-line values several stages share: which checkpoints (--steps), which instances
(--instances), which torch device (--device). Each parser validates against what the run has
and raises UserError with one line naming the flag, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from devtms.errors import UserError


def parse_instances(spec: str | None, available: Sequence[int]) -> list[int]:
    """"0,3,5-9" -> [0, 3, 5, 6, 7, 8, 9]; None or "all" -> every instance."""
    if spec is None or spec.strip() == "all":
        return list(available)
    chosen = []
    valid = set(available)
    for part in _parts(spec, "--instances"):
        lo, hi = _range(part, "--instances")
        for i in range(lo, hi + 1):
            if i not in valid:
                raise UserError(f"--instances: unknown instance {i}; this run has instances "
                                f"0-{max(available)}")
            chosen.append(i)
    return sorted(set(chosen))


def parse_steps(spec: str | None, available: Sequence[int]) -> list[int]:
    """"0,100,1000" exact checkpoint steps; "100-1000" every checkpoint in that range;
    "last"; None or "all" -> every checkpoint."""
    if not available:
        raise UserError("the run has no checkpoints")
    if spec is None or spec.strip() == "all":
        return list(available)
    shown = ", ".join(map(str, available[:12])) + (" ..." if len(available) > 12 else "")
    chosen = []
    for part in _parts(spec, "--steps"):
        if part == "last":
            chosen.append(available[-1])
            continue
        lo, hi = _range(part, "--steps")
        if "-" in part:
            inside = [s for s in available if lo <= s <= hi]
            if not inside:
                raise UserError(f"--steps {part}: no checkpoint in that range; checkpoints: {shown}")
            chosen.extend(inside)
        elif lo not in available:
            raise UserError(f"--steps: no checkpoint at step {lo}; checkpoints: {shown}")
        else:
            chosen.append(lo)
    return sorted(set(chosen))


def _parts(spec: str, flag: str) -> list[str]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise UserError(f"{flag}: empty list")
    return parts


def _range(part: str, flag: str) -> tuple[int, int]:
    """"7" -> (7, 7); "3-9" -> (3, 9)."""
    try:
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"{flag}: {part!r} is not a non-negative integer or a range a-b") from None
    if hi_i < lo_i:
        raise UserError(f"{flag}: {part!r} is not a valid range (need a <= b)")
    return lo_i, hi_i


def check_device(device: str) -> str:
    """A torch device this machine has, normalised ("cuda" -> "cuda"); UserError otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    return str(dev)
