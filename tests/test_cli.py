"""The ``hil`` command: subcommands, one-line errors with exit status 2, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from helpers import HilEcuRun, make_image

from hil.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, text: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert text in lines[0], lines[0]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "ecu", "flash", "image", "diag"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["flash"], "the following arguments are required"),
        (["ecu", "run", "-i", "no-such-interface"], "invalid choice"),
        (["diag", "--sim", "session", "sleepy"], "invalid choice"),
    ],
)
def test_usage_errors(capsys, args, text):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    one_line_error(capsys.readouterr().err, text)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["diag", "--sim", "--ecu", "tcu", "info"], "has no ECU 'tcu'"),
        (["diag", "--vehicle", "missing.toml", "--sim", "info"], "cannot read vehicle file"),
        (["diag", "--sim", "-i", "virtual", "info"], "drop the bus options"),
        (["diag", "--sim", "read", "XYZ"], "not hexadecimal"),
        (["ecu", "run", "--fault", "ecm:melt", "-i", "virtual"], "unknown fault kind"),
        (["ecu", "run", "--ecu", "tcu", "-i", "virtual"], "has no ECU 'tcu'"),
        (["flash", "--sim", "--ecu", "ecm", "missing.bin"], "cannot read image"),
        (
            ["image", "build", "missing.bin", "--ecu", "ecm", "--version", "1", "-o", "x"],
            "cannot read payload",
        ),
    ],
)
def test_user_errors_are_one_line(capsys, args, text):
    code, _out, err = run(capsys, *args)
    assert code == 2
    one_line_error(err, text)


def test_bad_vehicle_file_names_file_and_key(capsys, files):
    code, _out, err = run(capsys, "diag", "--vehicle", str(files / "bad_vin.toml"), "--sim", "info")
    assert code == 2
    one_line_error(err, "bad_vin.toml: vin: a VIN has 17 characters")


def test_debug_shows_the_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "hil", "--debug", "diag", "--sim", "--ecu", "tcu", "info"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "VehicleFileError" in result.stderr


def test_image_build_and_inspect(capsys, tmp_path):
    payload = tmp_path / "app.bin"
    payload.write_bytes(bytes(range(256)) * 40)
    image = tmp_path / "app.img"
    code, out, _ = run(
        capsys,
        "image",
        "build",
        str(payload),
        "--ecu",
        "bms",
        "--version",
        "2.1.0",
        "--counter",
        "4",
        "-o",
        str(image),
    )
    assert code == 0 and "HIL-BMS-HW01" in out and "development key" in out
    data = image.read_bytes()
    assert data[:4] == b"HSWI" and data[152:] == payload.read_bytes()
    code, out, _ = run(capsys, "image", "inspect", str(image))
    assert code == 0
    assert "2.1.0" in out and "signature: valid" in out and "fits ECU: bms" in out
    image.write_bytes(data[:-1] + b"\x00")
    code, out, _ = run(capsys, "image", "inspect", str(image))
    assert code == 1 and "does not match" in out


def test_flash_and_diag_on_the_simulated_vehicle(capsys, tmp_path, demo):
    image = tmp_path / "ecm.img"
    image.write_bytes(make_image(demo.ecu("ecm"), "2.5.0", 3, size=8000))
    state = str(tmp_path / "state")
    code, out, _ = run(capsys, "flash", "--sim", "--state-dir", state, "--ecu", "ecm", str(image))
    assert code == 0, out
    assert "ecm: flashed 2.5.0 (1.0.0 -> 2.5.0)" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "ecm", "info")
    assert code == 0
    assert "2.5.0" in out and "HIL-ECM-HW01" in out and "anti-rollback 3" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "read", "F189", "F1A0")
    assert code == 0 and "2.5.0" in out and "active B" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "session", "extended")
    assert code == 0 and "extended session" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "reset")
    assert code == 0 and "hard reset accepted" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "read", "1234")
    assert code == 1 and "0x31" in out
    # A downgrade is refused by the ECU: exit 1 and the reason.
    image.write_bytes(make_image(demo.ecu("ecm"), "2.0.0", 2, size=8000))
    code, out, _ = run(capsys, "flash", "--sim", "--state-dir", state, "--ecu", "ecm", str(image))
    assert code == 1
    assert "check dependencies" in out and "rollback refused" in out and "runs now: 2.5.0" in out


def test_flash_no_confirm_leaves_the_new_image_on_trial(capsys, tmp_path, demo):
    image = tmp_path / "ecm.img"
    image.write_bytes(make_image(demo.ecu("ecm"), "2.5.0", 3, size=8000))
    state = str(tmp_path / "state")
    flash = ("flash", "--sim", "--state-dir", state, "--ecu", "ecm")
    code, out, _ = run(capsys, *flash, "--no-confirm", str(image))
    assert code == 0, out
    assert "ecm: flashed 2.5.0 (1.0.0 -> 2.5.0)" in out
    assert "not confirmed" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "ecm", "info")
    assert code == 0 and "2.5.0" in out and "anti-rollback 1" in out
    # The counter was not raised: an image of a lower counter still goes in (and is confirmed).
    image.write_bytes(make_image(demo.ecu("ecm"), "2.0.0", 2, size=8000))
    code, out, _ = run(capsys, *flash, str(image))
    assert code == 0, out
    assert "ecm: flashed 2.0.0 (2.5.0 -> 2.0.0)" in out
    assert "not confirmed" not in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "ecm", "info")
    assert code == 0 and "anti-rollback 2" in out


def test_flash_refuses_an_untrusted_image_unless_told_not_to_verify(capsys, tmp_path, demo):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    image = tmp_path / "foreign.img"
    image.write_bytes(make_image(demo.ecu("bcm"), key=Ed25519PrivateKey.generate()))
    code, out, _ = run(capsys, "flash", "--sim", "--ecu", "bcm", str(image))
    assert code == 1 and "check image" in out and "not trusted" in out
    code, out, _ = run(capsys, "flash", "--sim", "--ecu", "bcm", "--no-verify", str(image))
    assert code == 1 and "check dependencies" in out and "signature invalid" in out


def test_boot_failure_then_dtcs(capsys, tmp_path, demo):
    state = str(tmp_path / "state")
    image = tmp_path / "bms.img"
    image.write_bytes(make_image(demo.ecu("bms"), "2.0.0", 2, size=4000))
    code, out, _ = run(
        capsys,
        "flash",
        "--sim",
        "--state-dir",
        state,
        "--ecu",
        "bms",
        "--fault",
        "bms:fail-boot",
        str(image),
    )
    assert code == 1
    assert "failed its trial boot" in out and "runs now: 1.0.0" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "bms", "dtc")
    assert code == 0 and "F00096 (U3000-96)" in out and "1 DTC(s)" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "bms", "clear-dtc")
    assert code == 0 and "DTCs cleared" in out
    code, out, _ = run(capsys, "diag", "--sim", "--state-dir", state, "--ecu", "bms", "dtc")
    assert code == 0 and "0 DTC(s)" in out


def test_fault_needs_sim(capsys):
    code, _out, err = run(capsys, "diag", "--fault", "ecm:drop", "-i", "virtual", "info")
    assert code == 2
    one_line_error(err, "--fault needs --sim")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ecu_run_stops_cleanly_on_signals(tmp_path, signum):
    ecus = HilEcuRun(
        "--state-dir",
        str(tmp_path),
        "-i",
        "virtual",
        "-c",
        "cli-signal-test",
        "--fault",
        "bms:fail-boot",
    )
    assert "fault armed: bms:fail-boot" in ecus.text
    assert ecus.stop(signum) == 0, ecus.text
    assert "stopped" in ecus.text
    assert "Traceback" not in ecus.text
    assert (tmp_path / "ecm" / "nvm.json").exists()
