"""The cluster DNS of one network-namespace host, for the three-host test (standard library only).

Run inside the host's namespace (``ip netns exec NS python dns_server.py``): it answers A queries on
127.0.0.1:53 from that namespace's /etc/hosts (the Service names the test wrote to /etc/netns/NS/hosts,
which ``ip netns exec`` mounts over /etc/hosts) and NXDOMAIN for any other name, so nothing in the
namespace ever asks a resolver outside it. Programs that resolve through the C library read /etc/hosts
directly; this server is for those that speak DNS themselves, like Prometheus' ``dns_sd_configs``.
"""

from __future__ import annotations

import socket
import struct
import sys

TTL = 5
A, IN = 1, 1


def load_hosts(path: str = "/etc/hosts") -> dict[str, str]:
    names: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and ":" not in fields[0]:  # IPv4 entries
                for name in fields[1:]:
                    names.setdefault(name.lower().rstrip("."), fields[0])
    return names


def answer(query: bytes, names: dict[str, str]) -> bytes | None:
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:  # a response, or not one question
        return None
    labels, i = [], 12
    while True:
        if i >= len(query):
            return None
        length = query[i]
        if length == 0:
            i += 1
            break
        if length & 0xC0:
            return None
        labels.append(query[i + 1:i + 1 + length].decode("ascii", "replace"))
        i += 1 + length
    if i + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[i:i + 4])
    question = query[12:i + 4]
    address = names.get(".".join(labels).lower())
    records = b""
    if address is None:
        rcode, ancount = 3, 0  # NXDOMAIN
    elif qtype == A and qclass == IN:
        rcode, ancount = 0, 1
        records = b"\xc0\x0c" + struct.pack("!HHIH", A, IN, TTL, 4) + socket.inet_aton(address)
    else:
        rcode, ancount = 0, 0  # the name exists, without records of that type
    reply_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    return struct.pack("!HHHHHH", ident, reply_flags, 1, ancount, 0, 0) + question + records


def main() -> int:
    names = load_hosts()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 53))
    print(f"dns: answering for {len(names)} names", flush=True)
    while True:
        query, client = server.recvfrom(4096)
        try:
            reply = answer(query, names)
        except Exception as exc:  # noqa: BLE001 - a bad packet never stops the server
            print(f"dns: bad query from {client}: {exc}", file=sys.stderr, flush=True)
            continue
        if reply is not None:
            server.sendto(reply, client)


if __name__ == "__main__":
    sys.exit(main())
