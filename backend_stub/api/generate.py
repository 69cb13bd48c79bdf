"""Regenerate the gRPC modules from the .proto files: ``python -m backend_stub.api.generate``."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
# Generated code imports its siblings as ``backend_stub.api.X_pb2``, so the
# proto root is the directory that holds the ``backend_stub`` package.
PROTO_ROOT = API_DIR.parent.parent
PROTO_FILES = ("common.proto", "update.proto", "device.proto", "campaign.proto")


def generate(out_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on the API's ``.proto`` files into ``out_root``.

    Returns the generated files. ``out_root`` receives ``backend_stub/api/...``.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("error: grpcio-tools is needed: pip install grpcio-tools") from exc
    well_known = resources.files("grpc_tools") / "_proto"
    sources = [str(Path("backend_stub") / "api" / name) for name in PROTO_FILES]
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"error: protoc failed with status {status}")
    out_dir = out_root / "backend_stub" / "api"
    return sorted(
        path for name in PROTO_FILES for path in out_dir.glob(name.replace(".proto", "_pb2*"))
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate in place (or into ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root to write into")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
