"""Options and a channel for the operator commands that talk to the backend."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from backend_stub.api import (
    campaign_pb2_grpc,
    common_pb2,
    device_pb2_grpc,
    update_pb2_grpc,
)
from backend_stub.errors import PkiError
from backend_stub.pki import load_pki
from hil.errors import HilError, UsageError

DEFAULT_BACKEND = "127.0.0.1:50051"
CALL_TIMEOUT_S = 30.0


class BackendCallError(HilError):
    """The backend refused a request or could not be reached."""


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend``, the credentials and ``--json``."""
    parser.add_argument(
        "--backend",
        default=os.environ.get("HIL_BACKEND", DEFAULT_BACKEND),
        metavar="HOST:PORT",
        help=f"the backend (default: $HIL_BACKEND or {DEFAULT_BACKEND})",
    )
    creds = parser.add_mutually_exclusive_group()
    creds.add_argument(
        "--tls-dir",
        type=Path,
        default=os.environ.get("HIL_TLS_DIR"),
        metavar="DIR",
        help="PKI directory ('hil pki init'): connect with its operator certificate "
        "(default: $HIL_TLS_DIR)",
    )
    creds.add_argument(
        "--insecure", action="store_true", help="plain connection (a backend on loopback)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


@contextlib.contextmanager
def operator_channel(args: argparse.Namespace) -> Iterator[Stubs]:
    """Open a channel with the operator's credentials; map RPC errors to one-line errors."""
    if args.tls_dir is not None and not args.insecure:
        try:
            credentials = load_pki(args.tls_dir).channel_credentials("operator")
        except PkiError as exc:
            raise UsageError(str(exc)) from exc
        channel = grpc.secure_channel(args.backend, credentials)
    elif args.insecure:
        channel = grpc.insecure_channel(args.backend)
    else:
        raise UsageError("give --tls-dir DIR (operator certificate) or --insecure")
    try:
        with calls(args.backend):
            yield Stubs(channel)
    finally:
        channel.close()


@contextlib.contextmanager
def calls(backend: str) -> Iterator[None]:
    """Turn a failed RPC into a :class:`BackendCallError` with the backend's message."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            raise BackendCallError(f"backend {backend} unreachable: {details}") from exc
        name = code.name if code is not None else "ERROR"
        raise BackendCallError(f"backend refused ({name}): {details}") from exc


class Stubs:
    """The three service stubs on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.update = update_pb2_grpc.UpdateServiceStub(channel)  # type: ignore[no-untyped-call]
        self.device = device_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
        self.campaign = campaign_pb2_grpc.CampaignServiceStub(channel)  # type: ignore[no-untyped-call]


def as_dict(message: Message) -> dict[str, Any]:
    """Return a message as a JSON-ready dict (field names as in the .proto)."""
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    print(json.dumps(value, indent=2, sort_keys=True))


def state_name(value: int, enum: Any = common_pb2.ActionState) -> str:
    """Return a state enum's short lowercase name (``ACTION_STATE_PENDING`` -> ``pending``)."""
    name: str = enum.Name(value)
    return name.split("_STATE_", 1)[-1].lower()
