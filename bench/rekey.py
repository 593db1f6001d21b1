"""A rekey at a key-period change (issue 19): time from a member receiving the GMK I_MESSAGE encrypted with the new
period's RSK to its first decrypted SRTP packet under that GMK, with the RSK's pairing lines built when the key set
arrived (``client.rsklines``) and without (the reference: the first decapsulation builds them).

The member's path is the session's (``client.session``): ``receive_i_message`` (ECCSI verify, SAKKE
decapsulation) with the keys of the current and the next period, the GMK into an ``SrtpReceiver``, the talker's
first packet unprotected. Cold and warm runs alternate so both see the same load.

    .venv/bin/python -m bench.rekey [--repeats 9] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from client import rsklines
from ptt.crypto import kms
from ptt.crypto.pairing import miller_lines
from ptt.groupkeys import GroupKey, build_gmk_messages, make_group_key
from ptt.mikey.imessage import IdentityKeys, KmsDomain, ReplayCache, receive_i_message
from ptt.srtp import SrtpReceiver, SrtpSender

TARGET_MS = 15.0
GROUP = "sip:fire@groups.example.org"
MEMBER = "sip:alice@example.org"
TALKER = "sip:bob@example.org"


def keys_of(domain: KmsDomain, master: kms.MasterSecrets, uri: str, period: int) -> IdentityKeys:
    material = kms.issue_user_keys(domain.uid(uri, period), master)
    return IdentityKeys(uri, domain, period, material.ssk, material.pvt, material.rsk)


def one_rekey(domain: KmsDomain, master: kms.MasterSecrets, step: int, *, warm: bool) -> float:
    """The rekey at the start of the key period ``step`` periods after 2026-12-01: a fresh member key set (so
    that no table of an earlier run helps), the GMK of that period; returns the milliseconds from the
    I_MESSAGE's arrival to the first decrypted packet."""
    when = 1_796_083_200.0 + step * domain.key_period + 10
    period = domain.period_number(when)
    held = [keys_of(domain, master, MEMBER, period - 1), keys_of(domain, master, MEMBER, period)]
    miller_lines.cache_clear()
    if warm:
        rsklines.warm_keys(held).result()  # at the key set's arrival, long before the rekey
    key: GroupKey = make_group_key()
    message = build_gmk_messages(keys_of(domain, master, GROUP, period), key, [MEMBER], now=when)[MEMBER]
    rtp = bytes([0x80, 111]) + (1).to_bytes(2, "big") + (960).to_bytes(4, "big") + (0x1234).to_bytes(4, "big")
    packet = SrtpSender(key, TALKER).protect(rtp + bytes(60))
    receiver = SrtpReceiver()
    start = time.perf_counter()
    received = receive_i_message(
        message,
        responder=held,
        expected_initiators=GROUP,
        trusted_kms={domain.kms_uri: domain},
        now=when,
        replay_cache=ReplayCache(16),
    )
    receiver.add_key(GroupKey(gmk=received.key, gmk_id=received.key_id, rand=received.rand))
    receiver.unprotect(packet)
    return (time.perf_counter() - start) * 1e3


def spread(values: list[float]) -> str:
    return f"min {min(values):7.2f}  median {statistics.median(values):7.2f}  max {max(values):7.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    master = kms.generate_master_secrets()
    domain = KmsDomain("kms.example.org", master.kpak, master.z_public, 2592000, 0)
    print(f"rekey benchmark: {repeats} rekeys each way, {os.cpu_count()} cores")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    one_rekey(domain, master, 0, warm=True)  # fixed-base tables, imports: not part of either figure
    cold: list[float] = []
    warm: list[float] = []
    for i in range(repeats):
        cold.append(one_rekey(domain, master, 1 + 2 * i, warm=False))
        warm.append(one_rekey(domain, master, 2 + 2 * i, warm=True))
    print(f"I_MESSAGE to first decrypted packet, lines built at the rekey (reference)  {spread(cold)}")
    print(f"I_MESSAGE to first decrypted packet, lines built when the key set arrived  {spread(warm)}")
    median = statistics.median(warm)
    verdict = "ok" if median <= TARGET_MS else "MISSED"
    print(
        f"median {median:.2f} ms  target <= {TARGET_MS:g} ms  ratio {TARGET_MS / median:.2f}  {verdict};  "
        f"reference / warmed {statistics.median(cold) / median:.2f}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
