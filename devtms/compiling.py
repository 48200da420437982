"""torch.compile as devtms uses it: for the hot loops of training and SGLD, on the CPU.

Inductor turns a step's many small elementwise ops (one group per activation) into a few
fused C++ loops; on the tiny tensors of a TMS the eager ops cost mostly dispatch, so this
is where the time goes. Compiling costs seconds (cached on disk by torch across processes),
so callers compile only work that repays it (see train.use_compile and llc.plan.use_compile),
and each compiled function is built once per process (`compile_once`).

The compiled kernels are kept in `kernel_cache_dir()`: torch's own cache, moved from the temp
directory (which many systems empty at every boot) to the user's cache directory, so a machine
pays activations27's cold compiling (2-3 min in one process) once per torch version, not once
per boot.
TORCHINDUCTOR_CACHE_DIR, where set, wins.
"""

from __future__ import annotations

import os
import shutil
import threading
import types
from collections.abc import Callable, Hashable
from pathlib import Path

_LOCK = threading.Lock()
_CACHE: dict[Hashable, Callable] = {}


def compile_available() -> bool:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def vector_options(inner: int) -> dict[str, int]:
    """Inductor options for loops whose innermost axis has `inner` floats.

    Inductor vectorizes the innermost axis at the machine's widest vector (16 floats with
    AVX-512). A TMS's innermost axis is its features, often 8 or fewer: every vector would
    then be half masked off. Where the CPU also has 8-float vectors (AVX2), they fit exactly:
    activations27's compiled training step takes 0.48 ms at 8 floats against 0.68 ms at 16.
    The width changes the order of the vector sums, so it is chosen from the shape alone.
    """
    if inner > 8:
        return {}
    try:
        from torch._inductor import cpu_vec_isa
        widths = {isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}
    except (ImportError, AttributeError, RuntimeError):  # inductor's internals moved
        return {}
    return {"cpp.simdlen": 256} if 256 in widths and max(widths) > 256 else {}


def with_own_code(fn: Callable, name: str) -> Callable:
    """A copy of the closure `fn` with a code object of its own, named `name`.

    torch.compile keeps its compiled graphs per code object, so closures of one `def` (one per
    activation, or per set of activation groups) would share one cache, recompile each other's
    entries and hit dynamo's recompile limit. Each copy gets its own cache.
    """
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's setting: where inductor keeps compiled kernels


def kernel_cache_dir() -> Path | None:
    """Where compiled kernels are kept: $TORCHINDUCTOR_CACHE_DIR where set, else
    $XDG_CACHE_HOME/devtms/torchinductor (~/.cache/devtms/torchinductor); None (torch's
    default, in the temp directory) where that cannot be created. About 25 MB for
    activations27's kernels."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset, or relative: which the XDG spec says to ignore
        base = os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "devtms" / "torchinductor"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # no home, or not writable: leave torch's default
        return None
    return path if os.access(path, os.W_OK) else None


def compile_once(key: Hashable, build: Callable[[], Callable]) -> Callable:
    """The function cached under `key`, made by `build()` the first time (thread-safe).

    One cache for every compiled function of the process (the trainer's loss and gradient,
    the SGLD steps): each is compiled once and reused by every later chunk, shard and run.
    Before the first, torch is pointed at `kernel_cache_dir()` (unless it has chosen one).
    """
    with _LOCK:
        if key not in _CACHE:
            if CACHE_ENV not in os.environ and (path := kernel_cache_dir()) is not None:
                os.environ[CACHE_ENV] = str(path)
            _CACHE[key] = build()
        return _CACHE[key]
