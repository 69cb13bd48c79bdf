"""The committed gRPC modules are exactly what the .proto files generate."""

from __future__ import annotations

import re
from pathlib import Path

from backend_stub.api import generate

# Version stamps of the generator are not part of the API.
_VERSION_LINE = re.compile(
    r"(GRPC_GENERATED_VERSION = .*|# Protobuf Python Version: .*|"
    r"_runtime_version\.Domain\.PUBLIC,\n(\s+\d+,\n){3})"
)


def _normalise(text: str) -> str:
    return _VERSION_LINE.sub("<version>", text)


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    generated = generate.generate(tmp_path)
    assert len(generated) == 12
    for path in generated:
        committed = generate.API_DIR / path.name
        assert committed.exists(), f"{path.name} is not committed"
        assert _normalise(committed.read_text()) == _normalise(path.read_text()), (
            f"{path.name} is stale: run 'python -m backend_stub.api.generate'"
        )


def test_every_proto_is_generated() -> None:
    protos = sorted(p.name for p in generate.API_DIR.glob("*.proto"))
    assert protos == sorted(generate.PROTO_FILES)
