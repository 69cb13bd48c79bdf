"""The operator commands against a real backend: JSON for scripts, one-line errors."""

from __future__ import annotations

import json

import pytest
from backend_helpers import TIMEOUT
from helpers import make_image

from backend_stub.api import device_pb2
from hil.cli import main

VIN = "WHLDMV00000000001"


@pytest.fixture
def remote(backend):
    return ["--backend", f"127.0.0.1:{backend.port}", "--insecure"]


def run_json(capsys, *argv):
    status = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def fails(capsys, *argv) -> str:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_release_vehicles_and_campaign_commands(capsys, tmp_path, remote, client, demo):
    paths = []
    for ecu in demo.ecus:
        path = tmp_path / f"{ecu.name}.img"
        path.write_bytes(make_image(ecu, "2.0.0", 2))
        paths.append(f"{ecu.name}={path}")
    release = run_json(
        capsys,
        "release",
        "create",
        "--name",
        "demo",
        "--version",
        "2",
        *[a for p in paths for a in ("--image", p)],
        *remote,
    )
    assert [i["ecu"] for i in release["images"]] == ["ecm", "bms", "bcm"]
    listed = run_json(capsys, "release", "list", *remote)
    assert [r["release_id"] for r in listed] == [release["release_id"]]
    for n in (1, 2):
        client.register(f"WHLDMV0000000000{n}", tags=["eu"] if n == 1 else [])
    vehicles = run_json(capsys, "vehicles", "list", "--tag", "eu", *remote)
    assert [v["vin"] for v in vehicles] == [VIN]
    campaign = run_json(
        capsys,
        "campaign",
        "create",
        "--release",
        release["release_id"],
        "--name",
        "c1",
        "--wave",
        "1",
        "--success-threshold",
        "100",
        "--start",
        *remote,
    )
    cid = campaign["campaign_id"]
    assert campaign["state"] == "CAMPAIGN_STATE_RUNNING"
    assert [w["size"] for w in campaign["waves"]] == [1, 1]
    paused = run_json(capsys, "campaign", "pause", cid, "--reason", "hold on", *remote)
    assert paused["state"] == "CAMPAIGN_STATE_PAUSED" and paused["pause_reason"] == "hold on"
    assert run_json(capsys, "campaign", "resume", cid, *remote)["state"] == "CAMPAIGN_STATE_RUNNING"
    status = run_json(capsys, "campaign", "status", cid, *remote)
    assert status["target_count"] == 2
    assert [c["campaign_id"] for c in run_json(capsys, "campaign", "list", *remote)] == [cid]
    aborted = run_json(capsys, "campaign", "abort", cid, "--reason", "enough", *remote)
    assert aborted["state"] == "CAMPAIGN_STATE_ABORTED"
    assert main(["campaign", "watch", cid, *remote]) == 0
    text = capsys.readouterr().out
    assert "created" in text and "aborted" in text
    # The human-readable forms print tables.
    assert main(["campaign", "status", cid, *remote]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["vehicles", "list", *remote]) == 0
    assert "2 vehicle(s)" in capsys.readouterr().out
    reply = client.device.GetVehicle(device_pb2.GetVehicleRequest(vin=VIN), timeout=TIMEOUT)
    assert reply.vin == VIN


def test_cli_errors_are_one_line(capsys, remote, tmp_path):
    assert "NOT_FOUND" in fails(capsys, "campaign", "status", "cmp-77", *remote)
    assert "--wave" in fails(
        capsys,
        "campaign",
        "create",
        "--release",
        "rel-1",
        "--name",
        "x",
        "--wave",
        "lots",
        *remote,
    )
    assert "must not be negative" in fails(
        capsys,
        "campaign",
        "create",
        "--release",
        "rel-1",
        "--name",
        "x",
        "--max-retries",
        "-1",
        *remote,
    )
    assert "--tls-dir" in fails(capsys, "campaign", "list", "--backend", "127.0.0.1:1")
    assert "unreachable" in fails(
        capsys, "campaign", "list", "--backend", "127.0.0.1:1", "--insecure"
    )
    assert "cannot read image" in fails(
        capsys,
        "release",
        "create",
        "--name",
        "n",
        "--version",
        "1",
        "--image",
        f"ecm={tmp_path / 'missing.img'}",
        *remote,
    )
    assert "ECU=VALUE" in fails(
        capsys,
        "release",
        "create",
        "--name",
        "n",
        "--version",
        "1",
        "--image",
        "nothing",
        *remote,
    )
    assert "no ca.pem" in fails(capsys, "campaign", "list", "--tls-dir", str(tmp_path))
    assert "loopback only" in fails(
        capsys,
        "backend",
        "serve",
        "--insecure",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert "--tls-dir" in fails(
        capsys, "backend", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")
    )
    assert "not HOST:PORT" in fails(
        capsys,
        "backend",
        "serve",
        "--insecure",
        "--listen",
        "nowhere",
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert "database URL" in fails(
        capsys,
        "backend",
        "serve",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--db",
        "mysql://x",
    )
