"""``hil backend serve``: run the bundled OTA backend."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from backend_stub.errors import BackendError
from backend_stub.server import BackendConfig, serve
from hil.errors import UsageError


def add_subparser(subparsers: Any) -> None:
    """Register ``hil backend serve``."""
    parser = subparsers.add_parser("backend", help="run the bundled OTA backend")
    actions = parser.add_subparsers(dest="backend_command", metavar="ACTION")
    actions.required = True
    run = actions.add_parser(
        "serve",
        help="serve the update, device and campaign services over gRPC",
        description="Serve the OTA backend. TLS with client certificates is required "
        "(--tls-dir, see 'hil pki init') unless --insecure is given, which listens on "
        "loopback only.",
    )
    run.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("backend-data"),
        metavar="DIR",
        help="SQLite file, artifacts and (without --tls-dir) the release key "
        "(default ./backend-data)",
    )
    run.add_argument(
        "--db",
        metavar="URL",
        help="database URL instead of SQLite, e.g. postgresql+psycopg://user@host/db "
        "(replicas may share it, with a shared --data-dir for artifacts)",
    )
    security = run.add_mutually_exclusive_group()
    security.add_argument("--tls-dir", type=Path, metavar="DIR", help="PKI from 'hil pki init'")
    security.add_argument(
        "--insecure", action="store_true", help="no TLS, no client identities (loopback only)"
    )
    run.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics over HTTP here"
    )
    run.add_argument(
        "--image-key",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="public key trusted for uploaded images (repeat); default: the development key",
    )
    run.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    run.set_defaults(run=run_serve)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (time, level, logger, message, extras)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as JSON."""
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    root = logging.getLogger()
    if args.log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    config = BackendConfig(
        data_dir=args.data_dir,
        listen=args.listen,
        db_url=args.db,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        metrics_listen=args.metrics_listen,
        image_keys=args.image_key,
    )
    try:
        running = serve(config)
    except BackendError as exc:
        raise UsageError(str(exc)) from exc
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = args.listen.rpartition(":")[0]
    print(f"backend listening on {host}:{running.port}", flush=True)
    if running.metrics_port is not None:
        print(
            f"metrics on http://{args.metrics_listen.rpartition(':')[0]}:{running.metrics_port}/metrics",
            flush=True,
        )
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        running.stop(2.0)
    return 0
