"""Loops the io package compiles with numba, loaded only when first called.

Reading and writing large files has a few byte-level loops that numpy can only do in
several passes; compiled, each is one pass. numba is imported on the first call, not with
the io modules, so that small files (and ``rifml --help``) never pay for it; its on-disk
cache (``cache=True``) makes that first call ~0.1 s after the first run ever.
"""

from __future__ import annotations

from collections.abc import Callable


def compiled_on_first_call(function: Callable) -> Callable:
    """``function`` compiled (nopython, GIL released, cached on disk) the first time it is called."""
    compiled: list[Callable] = []

    def call(*args):
        if not compiled:
            from numba import njit

            compiled.append(njit(cache=True, nogil=True)(function))
        return compiled[0](*args)

    call.__doc__ = function.__doc__
    call.__name__ = function.__name__
    return call
