"""A member's RSK pairing lines, built when its key set arrives rather than when the first GMK under it does.

The first SAKKE decapsulation with an RSK builds that RSK's Miller-loop line table (``ptt.crypto.pairing``:
20-50 ms on this machine, ~1 MB), so without this every member paid it at the first rekey after a key-period
change: the GMK of the new period waited on the table before its first packet could be decrypted. ``warm`` builds
the tables of the RSKs a keystore holds (the current and next key period) on one background thread, off the
reactor and off the audio threads, whenever a key set arrives: a session's start (the keystore loaded from its
file), provisioning, a reload of the keystore after another process renewed it (``PttSession.warm_rsk_lines``).

The tables go into the bounded cache the decapsulation reads (``pairing.miller_lines``, ``LINE_CACHE_SIZE``
tables); only the newest ``LINE_CACHE_SIZE`` RSKs asked for are built, so warming never evicts its own work. The
thread holds the GIL in slices of the switch interval like any Python thread: a warm-up mid-call delays an audio
callback by at most one slice, as any other thread of the client would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from ptt.crypto.pairing import LINE_CACHE_SIZE, miller_lines
from ptt.mikey.imessage import IdentityKeys

__all__ = ["warm", "warm_keys"]

log = logging.getLogger("ptt.client.rsklines")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptt-rsk-lines")
"""One thread, so that several key sets arriving at once are built one after the other, not in competition."""


def warm(rsks: Iterable[bytes]) -> Future[int]:
    """Build (in the background) the line tables of ``rsks`` not yet cached; the future gives how many it built.
    Returns at once; the caller need not wait (a decapsulation meanwhile builds or waits for nothing worse than
    it would have without this)."""
    wanted = [r for r in dict.fromkeys(bytes(r) for r in rsks) if r][-LINE_CACHE_SIZE:]
    return _executor.submit(_build, wanted)


def warm_keys(keys: Iterable[IdentityKeys]) -> Future[int]:
    """``warm`` for the RSKs of ``keys`` (e.g. ``keystore.held_keys(uri)``)."""
    return warm(k.rsk for k in keys if k.rsk)


def _build(rsks: list[bytes]) -> int:
    built = 0
    for rsk in rsks:
        if miller_lines.holds(rsk):
            continue
        try:
            miller_lines(rsk)
        except (ValueError, ZeroDivisionError) as exc:  # refused again, clearly, where the RSK is used
            log.warning("RSK lines not built: %s", exc)
            continue
        built += 1
    if built:
        log.debug("pairing lines built for %d RSKs", built)
    return built
