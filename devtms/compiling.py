"""torch.compile as devtms uses it: for the hot loops of training and SGLD, on the CPU.

Inductor turns a step's many small elementwise ops (one group per activation) into a few
fused C++ loops; on the tiny tensors of a TMS the eager ops cost mostly dispatch, so this
is where the time goes. Compiling costs seconds (cached on disk by torch across processes),
so callers compile only work that repays it (see train.use_compile and llc.use_compile).
"""

from __future__ import annotations

import shutil
import threading
import types
from collections.abc import Callable

LOCK = threading.Lock()  # hold while creating a compiled function (callers keep a cache of them)


def compile_available() -> bool:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def with_own_code(fn: Callable, name: str) -> Callable:
    """A copy of the closure `fn` with a code object of its own, named `name`.

    torch.compile keeps its compiled graphs per code object, so closures of one `def` (one per
    activation, or per set of activation groups) would share one cache, recompile each other's
    entries and hit dynamo's recompile limit. Each copy gets its own cache.
    """
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
