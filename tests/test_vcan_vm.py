"""The SocketCAN tests, run for real in a QEMU VM where this kernel has no SocketCAN.

.ci/vcan_vm.py boots Debian's stock kernel (vcan, CAN_RAW, CAN_ISOTP) under QEMU and
runs the ``socketcan``-marked tests there, with this interpreter, from this checkout. This
test passes only if every one of them ran and passed in the VM. It is skipped where this
kernel has AF_CAN and the vcan interface (they run natively then), inside the VM itself,
and, with the script's reason, where QEMU cannot run. Only in CI (``CI`` set) may the
script install QEMU with apt-get; elsewhere a test installs nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import vcan_problem

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "vcan_vm.py"
EXIT_SKIPPED = 77
SKIP_PREFIX = "vcan-vm: skipped: "


def run_script(*args: str, timeout_s: float) -> tuple[int, str]:
    """Run the VM script; on any way out of here, stop it (it kills its QEMU)."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
    return process.returncode, output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_socketcan_tests_pass_in_a_vm(tmp_path):
    if os.environ.get("HIL_VCAN_VM_GUEST"):
        pytest.skip("inside the vcan VM, which never starts another one")
    if vcan_problem(os.environ.get("HIL_VCAN", "vcan0")) is None:
        pytest.skip("this kernel has SocketCAN and vcan: the socketcan tests run natively")
    junit = tmp_path / "vm.xml"
    args = ["--junit-xml", str(junit)]
    if os.environ.get("CI", "").lower() in ("", "0", "false"):
        args.append("--no-install")
    status, output = run_script(*args, timeout_s=540)
    print(output)
    if status == EXIT_SKIPPED:
        reasons = [line for line in output.splitlines() if line.startswith(SKIP_PREFIX)]
        pytest.skip(reasons[-1].removeprefix(SKIP_PREFIX) if reasons else output)
    assert status == 0, f"the socketcan tests failed in the VM (status {status}): {output}"
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert cases, "the VM ran no socketcan test"
    skipped = [
        f"{case.get('name')}: {skip.get('message')}"
        for case in cases
        for skip in case.iter("skipped")
    ]
    assert not skipped, f"socketcan tests skipped in the VM: {skipped}"
