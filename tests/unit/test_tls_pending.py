"""Which pending TLS handshake is the oldest: the one accepted first, whatever order the threads register in."""

from __future__ import annotations

import socket

from dicom_node.net.tls import PendingHandshakes


def test_the_first_accepted_is_evicted_even_when_it_registers_last() -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        pending = PendingHandshakes(max_per_address=2)
        pending.opened("10.0.0.1", pairs[1][0], accepted=1)  # its thread ran first
        pending.opened("10.0.0.1", pairs[0][0], accepted=0)
        pending.opened("10.0.0.1", pairs[2][0], accepted=2)  # one too many: the oldest goes
        pairs[0][1].settimeout(2)
        assert pairs[0][1].recv(1) == b""  # accepted first: shut down
        pairs[1][1].settimeout(0.2)
        try:
            pairs[1][1].recv(1)
            raise AssertionError("the second connection was shut down")
        except TimeoutError:
            pass
    finally:
        for a, b in pairs:
            a.close()
            b.close()
