"""Count the frames between a public op and the body of its loop, as a debugger shows them.

``frames_to(call, body)`` runs ``call()`` with every jit cache cleared (so the op is
traced again), stops at the first time the function ``body`` runs and returns the
names of the jspatial frames on the stack then, from the outermost (the public op)
to ``body`` itself. Frames of JAX, of Python's ``functools`` and of this test are not
counted: a reader steps over them.
"""

from __future__ import annotations

import os
import sys

import jax

import jspatial

_PACKAGE = os.path.dirname(jspatial.__file__) + os.sep


def frames_to(call, body) -> list[str]:
    """The ``module.function`` names of the jspatial frames from the public op to ``body``."""
    target = body.__code__
    seen: list[list[str]] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is target and not seen:
            names = []
            f = frame
            while f is not None:
                if f.f_code.co_filename.startswith(_PACKAGE):
                    module = os.path.relpath(f.f_code.co_filename, _PACKAGE)[:-3]
                    names.append(f"{module.replace(os.sep, '.')}.{f.f_code.co_name}")
                f = f.f_back
            seen.append(names[::-1])

    jax.clear_caches()
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    if not seen:
        raise AssertionError(f"{body.__qualname__} never ran")
    return seen[0]
