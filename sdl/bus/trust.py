"""Who may connect to the broker, and what each may do there.

Authentication is CurveZMQ with pyzmq's ZAP authenticator (``zmq.auth``): every TCP peer proves it
holds the secret half of a key the broker trusts, and the broker learns the peer's name from its
public key (the ``User-Id`` of each message). Peers in the broker's own process (``inproc``: the
campaign) are the controller and are trusted as ``local``.

Authorisation is per key name (:class:`Grant`): which services it may serve (``instrument.furnace-1``
for a lab PC), which ``service:method`` it may call, which event topics it may publish. Patterns are
shell-style (``instrument.*:describe``). Everything not granted is refused, logged, and published on
the event stream as a ``bus.refused`` event naming the key, which the campaign records as a
security document.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

LOCAL = "local"  # a peer in the broker's own process


@dataclass(frozen=True)
class CurveKeys:
    """What a client or worker needs to reach a CURVE broker: the broker's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


@dataclass(frozen=True)
class Grant:
    serve: tuple[str, ...] = ()
    call: tuple[str, ...] = ()  # "service:method" patterns; "service" alone means any method
    publish: tuple[str, ...] = ()


@dataclass
class Trust:
    """The broker's side: its own key pair, the peers it trusts, and what each is granted."""

    public: bytes
    secret: bytes
    keys: dict[str, bytes]  # name -> public key (z85, as zmq.auth writes it)
    grants: dict[str, Grant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # the authenticator's thread reads what the launcher adds
        self._names = {key: name for name, key in self.keys.items()}

    def add(self, name: str, public: bytes, grant: Grant) -> None:
        """Trust one more key (an agent the campaign starts) with what it may do."""
        with self._lock:
            self.keys[name] = public
            self._names[public] = name
            self.grants[name] = grant

    def name_of(self, public: bytes) -> str | None:
        with self._lock:
            return self._names.get(public)

    def may_serve(self, name: str, service: str) -> bool:
        return name == LOCAL or any(fnmatchcase(service, p) for p in self._grant(name).serve)

    def may_call(self, name: str, service: str, method: str) -> bool:
        if name == LOCAL:
            return True
        target = f"{service}:{method}"
        return any(fnmatchcase(target, p if ":" in p else f"{p}:*") for p in self._grant(name).call)

    def may_publish(self, name: str, topic: str) -> bool:
        return name == LOCAL or any(fnmatchcase(topic, p) for p in self._grant(name).publish)

    def _grant(self, name: str) -> Grant:
        with self._lock:
            return self.grants.get(name, Grant())

    def server_socket(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with the broker's key pair."""
        socket.curve_server = True
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret

    def client_keys(self, public: bytes, secret: bytes) -> CurveKeys:
        return CurveKeys(self.public, public, secret)


class TrustAuthenticator(ThreadAuthenticator):
    """ZAP for CURVE: a client whose public key the :class:`Trust` holds gets in, under its name."""

    def __init__(self, context: zmq.Context, trust: Trust) -> None:
        super().__init__(context)
        self.trust = trust

    def start(self) -> TrustAuthenticator:
        super().start()
        self.configure_curve_callback(domain="*", credentials_provider=self)
        return self

    def callback(self, domain: str, key: bytes) -> bool:  # zmq.auth asks this at every CURVE handshake (key in z85)
        known = self.trust.name_of(key) is not None
        if not known:
            log.warning("refused a connection with an unknown key")
        return known

    def curve_user_id(self, client_public_key: bytes) -> str:  # the raw 32 bytes of a key the callback let in
        return self.trust.name_of(z85.encode(client_public_key)) or "unknown"
