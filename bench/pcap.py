"""Kernel timestamps as the referee: lateness of booking requests from a packet capture.

The simulator's arrival stamps include its own wake-up and queueing in another
process. The kernel's timestamp of the packet on the loopback interface does not.
Capture while a benchmark runs, then read it back:

    tcpdump -i lo -s 0 --time-stamp-precision=nano -w /tmp/bench.pcap tcp &
    .venv/bin/python -m bench.precision
    kill %1; .venv/bin/python -m bench.pcap /tmp/bench.pcap bench/out/precision.json

Each `POST .../api/book` segment is matched to its class by the form's `id=` field;
the benchmark's JSON gives each class's opening instant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

NANO_MAGIC = 0xA1B23C4D
MICRO_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113


@dataclass(frozen=True)
class BookPacket:
    at: float  # kernel timestamp, epoch seconds
    session_id: str
    cookie: str


def book_packets(path: Path) -> list[BookPacket]:
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (NANO_MAGIC, MICRO_MAGIC):
        raise SystemExit(f"{path}: not a little-endian pcap file")
    divisor = 1e9 if magic == NANO_MAGIC else 1e6
    linktype = struct.unpack("<I", data[20:24])[0]
    link_header = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16}.get(linktype)
    if link_header is None:
        raise SystemExit(f"{path}: link type {linktype} not supported")
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack("<IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        payload = _tcp_payload(frame[link_header:])
        if payload.startswith(b"POST ") and b"/api/book " in payload.split(b"\r\n", 1)[0]:
            packet = _parse_book(payload, seconds + fraction / divisor)
            if packet is not None:
                packets.append(packet)
    return packets


def _tcp_payload(ip: bytes) -> bytes:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return b""
    ip_len = (ip[0] & 0x0F) * 4
    tcp = ip[ip_len:]
    if len(tcp) < 20:
        return b""
    return tcp[(tcp[12] >> 4) * 4 :]


def _parse_book(payload: bytes, at: float) -> BookPacket | None:
    head, _, body = payload.partition(b"\r\n\r\n")
    form = parse_qs(body.decode(errors="replace"))
    cookie = ""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"cookie:"):
            for part in line.split(b":", 1)[1].decode(errors="replace").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "amhrdrauth":
                    cookie = value
    session = form.get("id", [""])[0]
    return BookPacket(at, session, cookie) if session else None


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"n={len(values):<4} p50={statistics.median(values):.3f}  p99={p99:.3f}  "
        f"max={max(values):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pcap", type=Path)
    parser.add_argument("bench_json", type=Path, help="the precision benchmark's JSON")
    args = parser.parse_args()
    raw = json.loads(args.bench_json.read_text())["raw"]
    opens = {entry["class"]: entry["opens_at"] for entry in raw}
    by_class: dict[str, list[BookPacket]] = {}
    for packet in book_packets(args.pcap):
        if packet.session_id in opens:
            by_class.setdefault(packet.session_id, []).append(packet)
    singles, firsts, spreads, early = [], [], [], 0
    for session_id, packets in by_class.items():
        packets.sort(key=lambda p: p.at)
        first_ms = (packets[0].at - opens[session_id]) * 1000
        early += sum(1 for p in packets if p.at < opens[session_id])
        if len(packets) == 1:
            singles.append(first_ms)
        else:
            firsts.append(first_ms)
            spreads.append((packets[-1].at - packets[0].at) * 1000)
    print("kernel timestamps on lo (ms after the opening instant)")
    print(f"  single requests          {summary(singles)}")
    print(f"  first request of a burst {summary(firsts)}")
    print(f"  burst spread             {summary(spreads)}")
    print(f"  early requests           {early}")


if __name__ == "__main__":
    main()
