"""The web process's memory: how many malloc arenas glibc may make.

glibc gives threads their own arenas (up to 8 per core) and keeps what a thread frees in its
arena for reuse. A web process decodes photos of several megabytes on up to
``QUEUENET_WEB_THREADS`` threads at once, so each arena ends up holding its own set of
image-sized blocks: under 32 clients a gunicorn process grew to about 290 MB. With two
arenas it stays near 100 MB, and its CPU per request did not change measurably (README,
Performance). Other C libraries (musl) have no ``mallopt``; there nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""``mallopt``'s parameter number for the most arenas (glibc's malloc.h)."""


def limit_malloc_arenas(arenas: int) -> bool:
    """Let glibc make at most ``arenas`` malloc arenas from now on (0: leave its default).
    True when the limit was set."""
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.debug("no mallopt in this C library: malloc arenas left as they are")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        logger.warning("mallopt(M_ARENA_MAX, %d) failed: malloc arenas left as they are", arenas)
        return False
    return True
