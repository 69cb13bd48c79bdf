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


def test_campaign_create_with_timed_waves_rate_and_abort_criteria(capsys, remote, client, demo):
    shas = [(ecu.name, client.upload(make_image(ecu, "2.0.0", 2)).sha256) for ecu in demo.ecus]
    release = client.release(shas)
    for n in (1, 2, 3):
        client.register(f"WHLDMV0000000000{n}")
    campaign = run_json(
        capsys,
        "campaign",
        "create",
        "--release",
        release.release_id,
        "--name",
        "phased",
        "--wave",
        "1",
        "--wave",
        "1@1.5h",
        "--rate",
        "60/min",
        "--rate-factor",
        "2",
        "--rate-every",
        "10",
        "--rate-on",
        "succeeded",
        "--rate-max",
        "600",
        "--abort-if",
        "failed:5:100",
        "--abort-if",
        "rolled_back:12.5%:20",
        "--start",
        *remote,
    )
    waves = campaign["waves"]
    assert [w.get("start_after_s", 0) for w in waves] == [0, 5400.0, 0]
    assert "starts_at" in waves[1] and "starts_at" not in waves[0]
    assert "started_at" in campaign
    assert campaign["rollout_rate"] == {
        "base_per_minute": 60,
        "increment_factor": 2.0,
        "increase_every": 10,
        "increase_on": "RATE_INCREASE_ON_SUCCEEDED",
        "maximum_per_minute": 600,
    }
    assert campaign["abort_criteria"] == [
        {"failure": "ABORT_FAILURE_FAILED", "threshold_pct": 5.0, "min_executed": 100},
        {"failure": "ABORT_FAILURE_ROLLED_BACK", "threshold_pct": 12.5, "min_executed": 20},
    ]
    assert main(["campaign", "status", campaign["campaign_id"], *remote]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "starts" in text and "+90m (" in text
    assert "(base 60/min, x2 every 10 succeeded, max 600/min)" in text
    assert "abort if: failed >= 5% of >= 100 executed; rolled_back >= 12.5% of >= 20" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--wave", "1@soon"], "--wave '1@soon': the delay must be"),
        (["--wave", "1@-5m"], "--wave '1@-5m': the delay must be"),
        (["--wave", "1@"], "--wave '1@': the delay must be"),
        (["--rate", "fast"], "--rate 'fast' is not a number per minute"),
        (["--rate", "-1"], "--rate '-1' is not a number per minute"),
        (["--rate-factor", "2"], "--rate-factor needs --rate"),
        (["--rate", "5", "--rate-every", "-1"], "--rate-every must be a whole number"),
        (["--rate", "5", "--rate-on", "installed"], "--rate-on: invalid choice"),
        (["--abort-if", "bogus:1:1"], "--abort-if 'bogus:1:1' is not KIND:PCT:MIN"),
        (["--abort-if", "failed:x:1"], "--abort-if 'failed:x:1' is not KIND:PCT:MIN"),
        (["--abort-if", "failed:5"], "--abort-if 'failed:5' is not KIND:PCT:MIN"),
        # Values the backend's engine refuses, with its message.
        (["--rate", "0"], "INVALID_ARGUMENT): rollout_rate.base_per_minute"),
        (["--rate", "10", "--rate-factor", "7"], "rollout_rate.increment_factor"),
        (["--rate", "10", "--rate-max", "5"], "rollout_rate.maximum_per_minute"),
        (["--abort-if", "any:0:1"], "abort_criteria[0].threshold_pct"),
        (["--abort-if", "any:5:0"], "abort_criteria[0].min_executed"),
        (["--wave", "1@400d"], "waves[0].start_after_s"),
    ],
)
def test_campaign_rule_options_fail_in_one_line(capsys, remote, options, message):
    create = ["campaign", "create", "--release", "rel-1", "--name", "x"]
    try:
        line = fails(capsys, *create, *options, *remote)
    except SystemExit as exc:  # argparse's own refusals exit from the parser
        assert exc.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        line = lines[0]
    assert message in line, line
