"""Recording cost and replay time (issue 17), in one process with the real parts (no network):

* **recording**: one hour of speech in one recorded group (a talker at 50 packets/s of Opus 24 kbit/s speech in
  SRTP, 10 listeners bound, bursts of 10 s) through ``RelayCore.route`` with and without recording, and the
  bursts through the ``Recorder`` (files + the SQLite index). Prints the relay's extra CPU per hour, the writer
  thread's CPU per hour, and the bytes stored per hour of speech (files and index).
* **replay of the last 50 bursts** (5 s each), as a member does it: the server's side (list, fetch every chunk,
  as ``server.history`` answers: store reads, file reads, base64) and the member's (opening the archived GMK
  I_MESSAGE: ECCSI verify + SAKKE; SRTP; Opus decoding to PCM).

Each measurement runs 3 times: min / median / max, and the load average at the start (the machine is shared).
Run with ``.venv/bin/python -m bench.recording [--quick]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

from client.codec import FRAME_BYTES, OpusEncoder
from client.history import decode_rtp
from ptt.crypto.kms import derive_user_keys, generate_master_secrets
from ptt.groupkeys import build_gmk_messages, make_group_key
from ptt.mikey.imessage import IdentityKeys, KmsDomain
from ptt.playback import decrypt_burst, open_archived_keys
from ptt.recording import Burst, BurstTap
from ptt.relaycore import RelayConfig, RelayCore
from ptt.relaystate import Binding, JoinSigner, binding_key
from ptt.srtp import SrtpSender
from server.groups.store import GroupStore
from server.history import HistoryRequests
from server.recorder import Recorder

GROUP = "sip:fire@example.org"
MEMBER = "sip:bob@example.org"
TALKER = "sip:alice@example.org"
PACKETS_PER_S = 50
BURST_S = 10


def speech_like_frames(count: int) -> list[bytes]:
    """Opus packets of a voiced signal (a 150 Hz buzz with its harmonics, varying): speech-sized at 24 kbit/s."""
    import math

    encoder = OpusEncoder()
    frames = []
    for n in range(count):
        samples = []
        for i in range(FRAME_BYTES // 2):
            t = (n * 960 + i) / 48000
            value = sum(math.sin(2 * math.pi * 150 * k * t * (1 + 0.1 * math.sin(t))) / k for k in range(1, 8))
            samples.append(int(6000 * value * (0.6 + 0.4 * math.sin(2 * math.pi * 0.7 * t))))
        frames.append(encoder.encode(b"".join(s.to_bytes(2, "little", signed=True) for s in samples)))
    return frames


def srtp_stream(count: int, frames: list[bytes], key: object, sender: str = TALKER) -> list[bytes]:
    protect = SrtpSender(key, sender).protect  # type: ignore[arg-type]
    out = []
    for seq in range(count):
        header = bytes([0x80, 96]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
        out.append(protect(header + (0x1234).to_bytes(4, "big") + frames[seq % len(frames)]))
    return out


def relay_with_group(listeners: int) -> tuple[RelayCore, tuple[str, int]]:
    core = RelayCore(RelayConfig(rate_packets_per_s=1e9, rate_burst=10**9))
    for i in range(listeners + 1):
        binding, token = Binding(GROUP, f"m{i}", 0x1234 if i == 0 else 0x2000 + i), bytes([i + 1]) * 8
        csk = bytes([i + 7]) * 16
        core.expect(token, binding, binding_key(csk, token), 0.0)
        core.handle_rtcp(JoinSigner(binding.ssrc, token, csk).packet(), ("127.0.0.1", 30000 + i), 0.0)
    core.set_talker(GROUP, 0x1234)
    return core, ("127.0.0.1", 30000)


def relay_cpu(packets: list[bytes], recorded: bool) -> tuple[float, list[Burst]]:
    core, talker = relay_with_group(10)
    core.set_recording(GROUP, recorded)
    route, now = core.route, 0.0
    bursts: list[Burst] = []
    started = time.process_time()
    per_burst = BURST_S * PACKETS_PER_S
    for index, packet in enumerate(packets):
        now += 0.02
        route(packet, talker, now)
        if index % per_burst == per_burst - 1:  # the floor is released and taken again
            core.set_talker(GROUP, None)
            core.set_talker(GROUP, 0x1234)
            bursts.extend(core.tap.completed)
            core.tap.completed = []
    return time.process_time() - started, bursts


def writer_cost(store: GroupStore, directory: Path, bursts: list[Burst]) -> int:
    """Write the bursts through a Recorder (the caller times it: this thread only waits meanwhile)."""
    recorder = Recorder(store, directory, queue_limit=len(bursts) + 1)
    recorder.submit(bursts)
    recorder.wait_idle(600)
    recorder.stop()
    return sum(p.stat().st_size for p in directory.rglob("*.pttr"))


def replay_setup(
    root: Path, frames: list[bytes], bursts: int, seconds: float
) -> tuple[GroupStore, Recorder, list[IdentityKeys]]:
    master = generate_master_secrets()
    domain = KmsDomain("kms.example.org", master.kpak, master.z_public, 30 * 86400, 0)
    now = time.time()
    period = domain.period_number(now)

    def keys(uri: str) -> IdentityKeys:
        m = derive_user_keys(domain.uid(uri, period), master)
        return IdentityKeys(uri, domain, period, m.ssk, m.pvt, m.rsk)

    store = GroupStore(root / "server.sqlite3", bytes(range(32)))
    store.create_group(GROUP, "Fire", created_by="bench", now=now)
    store.add_member(GROUP, MEMBER, now=now)
    store.set_recording(GROUP, 30, now=now)
    key = make_group_key()
    message = build_gmk_messages(keys(GROUP), key, [MEMBER], now=now)[MEMBER]
    store.store_imessage(GROUP, MEMBER, key.gmk_id, message, now=now)
    recorder = Recorder(store, root / "recordings", queue_limit=bursts + 1)
    tap = BurstTap(max_packets=int(seconds * PACKETS_PER_S))
    packets = srtp_stream(int(seconds * PACKETS_PER_S), frames, key)
    for b in range(bursts):
        for i, packet in enumerate(packets):
            tap.packet(GROUP, TALKER, 0x1234, packet, now + 1 + b * (seconds + 1) + i * 0.02)
    tap.flush()
    recorder.submit(tap.completed)
    recorder.wait_idle(600)
    return store, recorder, [keys(MEMBER)]


def replay_once(
    history: HistoryRequests, member_keys: list[IdentityKeys], domain: KmsDomain, limit: int
) -> tuple[float, float]:
    started = time.perf_counter()
    listing = history._list(MEMBER, GROUP, limit)
    fetched = []
    for meta in listing["bursts"]:
        packets, messages, offset = [], [], 0
        while True:
            reply = history._fetch(MEMBER, GROUP, meta["id"], offset)
            messages += [base64.b64decode(k["data"]) for k in reply.get("keys", [])]
            packets += [(at / 1000, base64.b64decode(p)) for at, p in reply["packets"]]
            offset = len(packets)
            if offset >= reply["total"]:
                break
        fetched.append((packets, messages))
    server = time.perf_counter() - started
    started = time.perf_counter()
    for packets, messages in fetched:
        keys, _ = open_archived_keys(messages, group=GROUP, holder_keys=member_keys, domain=domain)
        opened = decrypt_burst(packets, keys)
        assert opened.failed == 0 and decode_rtp(opened.rtp)
    return server, time.perf_counter() - started


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    low, mid, high = min(values) * scale, statistics.median(values) * scale, max(values) * scale
    return f"min {low:.3f} / median {mid:.3f} / max {high:.3f} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 minutes of speech and 10 bursts instead")
    args = parser.parse_args(argv)
    hour = 3600 * PACKETS_PER_S
    count = hour // 6 if args.quick else hour
    scale = hour / count
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    frames = speech_like_frames(250)
    packets = srtp_stream(count, frames, make_group_key())
    print(f"recording: {count / PACKETS_PER_S / 60:.0f} min of speech, SRTP {sum(map(len, packets)) / count:.0f} "
          f"octets/packet, {BURST_S} s bursts, 10 listeners; scaled to one hour of speech per group")  # fmt: skip
    plain, recorded, writer, files = [], [], [], 0
    bursts: list[Burst] = []
    for _ in range(3):
        plain.append(relay_cpu(packets, False)[0] * scale)
        cpu, bursts = relay_cpu(packets, True)
        recorded.append(cpu * scale)
        with tempfile.TemporaryDirectory(prefix="ptt-bench-rec-") as tmp:
            store = GroupStore(Path(tmp) / "s.sqlite3", bytes(range(32)))
            store.create_group(GROUP, "Fire", created_by="bench", now=0.0)
            started = time.process_time()
            files = writer_cost(store, Path(tmp) / "rec", bursts)
            writer.append((time.process_time() - started) * scale)
            index = (Path(tmp) / "s.sqlite3").stat().st_size
            store.close()
    extra = [r - p for r, p in zip(recorded, plain, strict=True)]
    print(f"  relay forwarding CPU, not recorded   {spread(plain, 's per hour')}")
    print(f"  relay forwarding CPU, recorded       {spread(recorded, 's per hour')}")
    print(f"  recording's extra relay CPU          {spread(extra, 's per hour')}")
    print(f"  writer thread CPU (files + index)    {spread(writer, 's per hour')}")
    print(f"  stored per hour of speech: {files * scale / 1e6:.1f} MB of burst files + index "
          f"{index * scale / 1e3:.0f} kB ({len(bursts)} bursts)")  # fmt: skip
    bursts_n, seconds = (10, 5.0) if args.quick else (50, 5.0)
    with tempfile.TemporaryDirectory(prefix="ptt-bench-replay-") as tmp:
        store, recorder, member_keys = replay_setup(Path(tmp), frames, bursts_n, seconds)
        history = HistoryRequests(None, store, recorder, None)
        domain = member_keys[0].domain
        server_side, member_side = [], []
        for _ in range(3):
            s, m = replay_once(history, member_keys, domain, bursts_n)
            server_side.append(s)
            member_side.append(m)
        recorder.stop()
        store.close()
    total = [s + m for s, m in zip(server_side, member_side, strict=True)]
    print(f"replay of the last {bursts_n} bursts ({seconds:.0f} s each):")
    print(f"  server: list + fetch every chunk     {spread(server_side, 's')}")
    print(f"  member: keys, SRTP, Opus to PCM      {spread(member_side, 's')}")
    print(f"  total                                {spread(total, 's')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
