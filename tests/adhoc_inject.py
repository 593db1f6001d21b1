"""A hostile domain user on the LAN (run inside its network namespace by tests/test_adhoc_e2e.py):

  python -m tests.adhoc_inject KEYSTORE PASSPHRASE MEDIA_HOST:PORT LOCAL_ADDRESS GROUP_URI

sends to the group's media multicast address random datagrams, SRTP media and SRTCP floor messages under a GMK it
made up, and unprotected floor messages; and to the discovery group three key deliveries for the group: one it
signed claiming to manage the group, one claiming to come from the group's manager but signed by itself, and one
for a new group with an I_MESSAGE whose signature is zeroed.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

from client.keystore import Keystore
from ptt.adhoc.messages import Envelope, GroupInfo, KeyDelivery, seal
from ptt.crypto import eccsi
from ptt.floor.messages import FloorMessage, Subtype
from ptt.groupkeys import make_group_key
from ptt.mikey.imessage import build_i_message
from ptt.srtp import SrtpSender

DISCOVERY = ("239.255.80.84", 8450)


def main(argv: list[str]) -> int:
    keystore_path, passphrase, media, local, group_uri = argv
    keystore = Keystore.open(Path(keystore_path), passphrase.encode())
    me = keystore.identities()[0]
    now = time.time()
    keys = keystore.current_keys(me, now)
    assert keys is not None
    host, port = media.rsplit(":", 1)
    target = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)

    # media and floor control under a GMK of our own making, and in the clear
    fake = make_group_key()
    sender = SrtpSender(fake, me)
    ssrc = 0x0BADF00D
    for seq in range(20):
        rtp = struct.pack(">BBHII", 0x80, 96, seq, seq * 960, ssrc) + os.urandom(80)
        sock.sendto(sender.protect(rtp), target)
        sock.sendto(rtp, target)
        sock.sendto(os.urandom(100), target)
    for subtype in (Subtype.REQUEST, Subtype.TAKEN, Subtype.GRANTED):
        message = bytes(FloorMessage(subtype, ssrc, user_id=me, granted_party=me))
        sock.sendto(sender.protect_rtcp(message), target)
        sock.sendto(message, target)

    # forged key deliveries
    bob = "sip:bob@example.org"
    manager = "sip:alice@example.org"
    key = make_group_key()
    claimed = GroupInfo(group_uri, "rescue", me, 1000, host, int(port), key.gmk_id, (me, bob))

    def i_message(responder: str) -> bytes:
        return build_i_message(initiator=keys, responder_uri=responder, key=key.gmk, key_id=key.gmk_id, now=now)

    sock.sendto(seal(keys, KeyDelivery(claimed, i_message(bob)), now), DISCOVERY)
    as_manager = replace(claimed, manager=manager, members=(manager, bob))
    envelope = Envelope(manager, keys.domain.kms_uri, int(now * 1000), KeyDelivery(as_manager, i_message(bob)))
    signature = eccsi.sign(envelope.signed_octets(), keys.uid, keys.ssk, keys.pvt, keys.domain.kpak)
    sock.sendto(bytes(replace(envelope, signature=signature)), DISCOVERY)
    other = replace(claimed, uri="sip:adhoc.trap.000000@example.org", name="trap")
    unsigned = i_message(bob)[:-129] + bytes(129)
    sock.sendto(seal(keys, KeyDelivery(other, unsigned), now + 0.001), DISCOVERY)
    print("injected", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
