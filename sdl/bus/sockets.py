"""Socket options every bus socket shares: libzmq's own heartbeats, so that connection liveness is
kept by libzmq's I/O thread (C, no GIL) rather than by Python code (see :mod:`sdl.wire`)."""

from __future__ import annotations

import zmq

from sdl.wire import ZMTP_HEARTBEAT_INTERVAL_S, ZMTP_HEARTBEAT_TIMEOUT_S


def configure_liveness(socket: zmq.Socket) -> None:
    """PING every interval; close the connection when the peer has not answered within the timeout
    (and ask the peer to do the same, HEARTBEAT_TTL). libzmq takes milliseconds."""
    socket.setsockopt(zmq.HEARTBEAT_IVL, int(ZMTP_HEARTBEAT_INTERVAL_S * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(ZMTP_HEARTBEAT_TIMEOUT_S * 1000))
    socket.setsockopt(zmq.HEARTBEAT_TTL, int(ZMTP_HEARTBEAT_TIMEOUT_S * 1000))
