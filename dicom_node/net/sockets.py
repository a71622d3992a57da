"""Socket tuning shared by the SCP and the SCU."""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    Without it small DIMSE messages wait for delayed ACKs: about 40 ms per image on loopback.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, set_nodelay)]
