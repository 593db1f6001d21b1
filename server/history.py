"""Replay of recorded traffic over the control channel (issue 17): a logged-in member lists a group's recent bursts
and fetches them, with the I_MESSAGEs of the burst's GMKs that were addressed to *it* (``server.groups.recordings``
decides who may have what: access follows the archived keys).

  C history {group, limit?}                  → S history_list {group, bursts: [{id, talker, started, …}]}
  C history_fetch {group, burst, offset?}    → S history_burst {group, burst, offset, total, packets, keys?}

``packets`` are [offset in ms, base64 SRTP] from packet ``offset`` on, at most ``CHUNK_OCTETS`` of SRTP per reply
(the frame limit is 256 KiB): the client asks again from ``offset + len(packets)`` until ``total``. ``keys`` (in the
first chunk) are [{gmk_id, data}]: the member's own archived GMK I_MESSAGEs. A group the member never had a key of
and a burst it may not have both answer 404, alike. Requests are rate-limited per member; reading runs on the store
thread, never on the reactor.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from ptt.control import b64
from ptt.groupinfo import Refused
from ptt.ratelimit import BucketTable
from ptt.recording import RecordingFormatError
from server.groups.store import GroupStore
from server.recorder import Recorder

log = logging.getLogger("ptt.server.history")

RATE, BURST = 20.0, 100
"""History requests per member: listing and fetching 50 bursts at once fits in the burst."""
MAX_LIST = 200
CHUNK_OCTETS = 128 * 1024


class HistoryRequests:
    """What ``CallShell.on_history`` runs."""

    def __init__(self, reactor: Any, store: GroupStore, recorder: Recorder, store_pool: Any) -> None:
        self.reactor = reactor
        self.store = store
        self.recorder = recorder
        self.store_pool = store_pool
        self._limit: BucketTable[str] = BucketTable(RATE, BURST)
        self._log_limit: BucketTable[str] = BucketTable(0.2, 3)

    def handle(self, uri: str, message: dict[str, Any], now: float) -> defer.Deferred[dict[str, Any]]:
        if not self._limit.take(uri, now):
            raise Refused(429, "too many history requests: retry in a second")
        group = message["group"]
        if message["type"] == "history":
            limit = message.get("limit", 50)
            if type(limit) is not int or not 1 <= limit <= MAX_LIST:
                raise Refused(400, f"history: limit must be an integer from 1 to {MAX_LIST}")
            return self._run(uri, self._list, uri, group, limit)
        burst, offset = message.get("burst"), message.get("offset", 0)
        if type(burst) is not int or type(offset) is not int or burst < 0 or offset < 0:
            raise Refused(400, "history_fetch: burst and offset must be non-negative integers")
        return self._run(uri, self._fetch, uri, group, burst, offset)

    def _run(self, uri: str, function: Any, *args: Any) -> defer.Deferred[dict[str, Any]]:
        d = deferToThreadPool(self.reactor, self.store_pool, function, *args)

        def refused(failure: Any) -> Any:
            if failure.check(Refused) and self._log_limit.take(uri, self.reactor.seconds()):
                log.info("history request of %s refused: %s", uri, failure.value)
            return failure

        return d.addErrback(refused)

    # --- on the store thread ---

    def _list(self, uri: str, group: str, limit: int) -> dict[str, Any]:
        if not self.store.was_member(group, uri):
            raise Refused(404, f"no recordings of {group} for {uri}")
        held = self.store.archived_keys(group, uri)
        given = {k.gmk_id: k.created_at for k in held}
        bursts = [
            b
            for b in self.store.bursts(group, limit=MAX_LIST)
            if any(g in given and given[g] <= b.ended for g in b.gmk_ids)
        ][-limit:]
        return {"type": "history_list", "group": group, "bursts": [b.to_json() for b in bursts]}

    def _fetch(self, uri: str, group: str, burst_id: int, offset: int) -> dict[str, Any]:
        burst = self.store.burst(burst_id)
        keys = self.store.replayable(uri, burst) if burst is not None and burst.group == group else []
        if burst is None or not keys:
            raise Refused(404, f"no burst {burst_id} of {group} for {uri}")
        try:
            packets = self.recorder.read(burst)
        except (OSError, ValueError, RecordingFormatError) as exc:
            log.error("burst %d of %s unreadable: %s", burst_id, group, exc)
            raise Refused(500, f"burst {burst_id} is unreadable") from None
        chunk: list[list[object]] = []
        size = 0
        for at, packet in packets[offset:]:
            if size + len(packet) > CHUNK_OCTETS and chunk:
                break
            chunk.append([round(at * 1000), b64(packet)])
            size += len(packet)
        reply: dict[str, Any] = {
            "type": "history_burst",
            "group": group,
            "burst": burst_id,
            "offset": offset,
            "total": len(packets),
            "packets": chunk,
        }
        if offset == 0:
            reply["keys"] = [{"gmk_id": k.gmk_id.hex(), "data": b64(k.data)} for k in keys]
        return reply
