"""``module:function`` names for user code (reward functions, simulated labelers, gold scores)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from tether.errors import TetherError


def load_function(spec: str, what: str = "function") -> Callable:
    """Import ``package.module:function``, finding modules in the current folder too (the
    ``tether`` script, unlike ``python -m``, does not put it on the path). Each way it can fail
    is one line that names ``what`` and the part that failed."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TetherError(f"{what} must look like module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TetherError(f"{what} {spec}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module failed while loading: one line, not a traceback
        raise TetherError(f"{what} {spec}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise TetherError(f"{what} {spec}: module {module_name!r} has no function {attr!r}")
    if not callable(fn):
        raise TetherError(f"{what} {spec}: {attr!r} is not a function")
    return fn
