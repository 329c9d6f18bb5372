"""The ``multicast`` conformance backend: not a server, a check that multicast datagrams
sent on an interface come back to a socket on it, which mDNS needs.

``MECHAKIT_TEST_MDNS_INTERFACE`` names the interface address to use; else loopback
(``127.0.0.1``) is tried. Where neither works (a container without multicast) the
``nameresolution.mdns`` row is skipped with the reason. Placeholder: ``{backend.interface}``.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable

GROUP = "224.0.0.251"
"""mDNS's IPv4 group; the check uses a free port of its own, not 5353."""
LOOPBACK = "127.0.0.1"


def multicast_loops_back(interface: str, timeout: float = 1.0) -> str | None:
    """None when a datagram sent to the mDNS group on ``interface`` is received there;
    else why not."""
    token = os.urandom(8)
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            receiver.bind(("", 0))
            membership = socket.inet_aton(GROUP) + socket.inet_aton(interface)
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            receiver.settimeout(timeout)
            sender.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
            )
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sender.sendto(token, (GROUP, receiver.getsockname()[1]))
            while True:
                if receiver.recv(64) == token:
                    return None
    except TimeoutError:
        return f"a multicast datagram sent on {interface} did not come back within {timeout:g}s"
    except OSError as exc:
        return f"cannot use multicast on {interface}: {exc}"


class MulticastBackend(Backend):
    name = "multicast"
    env_var = "MECHAKIT_TEST_MDNS_INTERFACE"

    def parse_address(self, value: str) -> dict[str, str]:
        reason = multicast_loops_back(value)
        if reason:
            raise BackendUnavailable(f"{self.env_var}={value!r}: {reason}")
        return {"interface": value}

    def start_local(self, workdir: Path) -> BackendInfo:
        reason = multicast_loops_back(LOOPBACK)
        if reason:
            raise BackendUnavailable(
                f"{reason}; set {self.env_var} to the address of an interface where multicast works"
            )
        return BackendInfo(
            {"interface": LOOPBACK},
            source="loopback multicast",
            stop=lambda: shutil.rmtree(workdir, ignore_errors=True),
        )
