"""Start the bundled OTA backend: gRPC services, health, metrics, and the timeout ticker.

:func:`serve` returns a started :class:`RunningBackend` bound to the address
asked for (port 0 picks a free one). The caller stops it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from backend_stub.artifacts import ArtifactStore
from backend_stub.engine import Clock
from backend_stub.errors import BackendError, ConfigError
from backend_stub.grpc_api import SERVICE_NAMES, add_services
from backend_stub.metrics import Metrics
from backend_stub.pki import RELEASE_KEY_FILE, load_pki, write_private_key
from backend_stub.service import Limits, OtaBackend
from backend_stub.store.sql import SqlStore, sqlite_url
from ota_formats.errors import KeyFileError
from ota_formats.signing import dev_public_key, load_private_key, load_public_key

log = logging.getLogger(__name__)


@dataclass
class BackendConfig:
    """How to run the backend."""

    data_dir: Path
    listen: str = "127.0.0.1:50051"
    db_url: str | None = None
    tls_dir: Path | None = None
    insecure: bool = False
    metrics_listen: str | None = None
    release_key: Path | None = None
    image_keys: list[Path] = field(default_factory=list)
    max_workers: int = 32
    tick_interval_s: float = 1.0
    limits: Limits = field(default_factory=Limits)


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check the port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunningBackend:
    """A started backend; :meth:`stop` shuts it down."""

    def __init__(
        self,
        server: grpc.Server,
        backend: OtaBackend,
        port: int,
        metrics: Metrics,
        metrics_server: object | None,
        metrics_port: int | None,
        tick_interval_s: float,
    ) -> None:
        self.server = server
        self.backend = backend
        self.port = port
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._metrics_server = metrics_server
        self._stopping = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, args=(tick_interval_s,), name="backend-ticker", daemon=True
        )
        self._ticker.start()

    @property
    def release_public_key(self) -> Ed25519PublicKey:
        """The key that verifies this backend's release signatures."""
        return self.backend.release_key.public_key()

    def _tick(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                self.backend.engine.tick()
            except BackendError as exc:
                log.warning("timeout check failed: %s", exc)
            except Exception:
                log.exception("timeout check failed")

    def wait(self) -> None:
        """Block until the server stops."""
        self.server.wait_for_termination()

    def stop(self, grace_s: float | None = 1.0) -> None:
        """Stop serving, the ticker and the metrics endpoint; close the store."""
        self._stopping.set()
        self.server.stop(grace_s).wait()
        self._ticker.join(timeout=5)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
            self._metrics_server.server_close()  # type: ignore[attr-defined]
        self.backend.store.close()

    def __enter__(self) -> RunningBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop(0)


def _release_key(config: BackendConfig) -> Ed25519PrivateKey:
    path = config.release_key
    if path is None and config.tls_dir is not None:
        path = load_pki(config.tls_dir).release_key_path
    if path is None:
        path = config.data_dir / RELEASE_KEY_FILE
        if not path.exists():
            write_private_key(path, Ed25519PrivateKey.generate())
            log.warning("created a release signing key in %s", path)
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc


def _image_keys(config: BackendConfig) -> list[Ed25519PublicKey]:
    if not config.image_keys:
        return [dev_public_key()]
    try:
        return [load_public_key(path) for path in config.image_keys]
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc


def serve(config: BackendConfig, *, clock: Clock = time.time) -> RunningBackend:
    """Start the backend described by ``config`` and return it running."""
    host, port = split_address(config.listen)
    if config.insecure and config.tls_dir is not None:
        raise ConfigError("--insecure and --tls-dir exclude each other")
    if config.insecure and not is_loopback(host):
        raise ConfigError(f"--insecure listens on loopback only (127.0.0.1, ::1); {host!r} is not")
    if not config.insecure and config.tls_dir is None:
        raise ConfigError("TLS needs --tls-dir DIR (see 'hil pki init'); or pass --insecure")
    pki = load_pki(config.tls_dir) if config.tls_dir is not None else None
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {config.data_dir}: {exc}") from exc
    store = SqlStore(config.db_url or sqlite_url(config.data_dir))
    try:
        backend = OtaBackend(
            store,
            ArtifactStore(config.data_dir / "artifacts"),
            release_key=_release_key(config),
            image_trust_anchors=_image_keys(config),
            clock=clock,
            limits=config.limits,
        )
        metrics = Metrics(store)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_services(server, backend, tls=pki is not None, metrics=metrics)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", *SERVICE_NAMES):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if pki is not None:
                bound = server.add_secure_port(address, pki.server_credentials())
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {config.listen}: {exc}") from exc
        if not bound:
            raise ConfigError(f"cannot listen on {config.listen}")
        metrics_server, metrics_port = None, None
        if config.metrics_listen:
            metrics_host, wanted = split_address(config.metrics_listen)
            try:
                metrics_server, _ = start_http_server(
                    wanted, addr=metrics_host, registry=metrics.registry
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {config.metrics_listen}: {exc}"
                ) from exc
            metrics_port = metrics_server.server_address[1]
        server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            store.close()
        raise
    log.info("backend listening on %s:%d (%s)", host, bound, "TLS" if pki else "insecure")
    return RunningBackend(
        server, backend, bound, metrics, metrics_server, metrics_port, config.tick_interval_s
    )
