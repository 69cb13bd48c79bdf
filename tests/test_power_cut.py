"""Power cuts as process kills: ``hil ecu run`` killed with SIGKILL in each phase of a flash.

The ECU runs in its own process and reaches this test's virtual bus through
python-can-remote's server on loopback, as it would on a bench without vcan.
After the kill a new process starts from the same NVM directory; it must boot
a valid image (the old one, or the new one once it was accepted).
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from helpers import HilEcuRun, make_image, wait_for

from ecu_sim.nvm import Nvm
from gateway import DiagChannel, Flasher, FlashProgress, FlashStep

pytestmark = pytest.mark.timeout(300)


def ecu_process(url: str, state_dir: Path, *faults: str) -> HilEcuRun:
    """``hil ecu run`` for the ECM in a child process, on the remote bus."""
    args = ["--state-dir", str(state_dir), "--ecu", "ecm", "-i", "remote", "-c", url]
    for fault in faults:
        args += ["--fault", fault]
    return HilEcuRun(*args)


@pytest.fixture
def tester(channel: str) -> Iterator[tuple[can.BusABC, can.Notifier]]:
    bus = can.Bus(interface="virtual", channel=channel)
    notifier = can.Notifier(bus, [], timeout=0.05)
    yield bus, notifier
    notifier.stop()
    bus.shutdown()


def assert_boots_a_valid_image(state_dir: Path) -> str:
    """The NVM record is readable and the active bank holds exactly what it records."""
    record = Nvm(state_dir / "ecm").load()
    assert record is not None
    assert record.active_bank is not None
    bank = record.banks[record.active_bank]
    assert bank.state == "valid"
    data = (state_dir / "ecm" / ("bank_a.bin", "bank_b.bin")[record.active_bank]).read_bytes()
    assert hashlib.sha256(data[: bank.size_bytes]).hexdigest() == bank.sha256
    return bank.version


PHASES = [
    # kill when this step starts (after bytes for the transfer), faults, versions allowed after
    (FlashStep.ERASE, 0, ("ecm:slow-erase=3",), {"1.0.0"}),
    (FlashStep.TRANSFER, 6000, (), {"1.0.0"}),
    (FlashStep.TRANSFER_EXIT, 0, (), {"1.0.0"}),
    (FlashStep.CHECK_MEMORY, 0, (), {"1.0.0"}),
    (FlashStep.CHECK_DEPENDENCIES, 0, (), {"1.0.0", "2.0.0"}),
    (FlashStep.RESET, 0, (), {"2.0.0"}),
    (FlashStep.VERIFY, 0, (), {"2.0.0"}),
    (FlashStep.CONFIRM, 0, (), {"2.0.0"}),
]


@pytest.mark.parametrize(
    ("phase", "after_bytes", "faults", "allowed"), PHASES, ids=[str(p[0]) for p in PHASES]
)
def test_process_kill_in_each_phase(
    remote, tester, tmp_path, demo, phase, after_bytes, faults, allowed
):
    state_dir = tmp_path / "state"
    bus, notifier = tester
    ecu = ecu_process(remote, state_dir, *faults)
    killed = threading.Event()
    image = make_image(demo.ecu("ecm"), "2.0.0", 2, size=12 * 1024)

    def progress(event: FlashProgress) -> None:
        if event.step == phase and event.bytes_sent >= after_bytes and not killed.is_set():
            if phase == FlashStep.ERASE:
                threading.Timer(0.5, lambda: (ecu.kill(), killed.set())).start()
                return
            ecu.kill()
            killed.set()

    try:
        with DiagChannel(bus, notifier, demo, demo.ecu("ecm")) as channel:
            result = Flasher(channel, on_progress=progress, boot_timeout_s=0.5).flash(image)
        assert wait_for(killed.is_set, timeout=10)
        assert not result.ok
        assert ecu.process.returncode == -signal.SIGKILL
        version = assert_boots_a_valid_image(state_dir)
        assert version in allowed | {"1.0.0"}
        # Power comes back: a new process boots from the same NVM and answers.
        ecu = ecu_process(remote, state_dir)
        with DiagChannel(bus, notifier, demo, demo.ecu("ecm")) as channel:
            running, _hw, status = Flasher(channel).read_identity()
        assert running in allowed
        assert status.pending_bank == 0xFF
        assert assert_boots_a_valid_image(state_dir) == running
        # And it can be flashed to the end.
        with DiagChannel(bus, notifier, demo, demo.ecu("ecm")) as channel:
            again = Flasher(channel).flash(make_image(demo.ecu("ecm"), "2.0.1", 2, size=4096))
        assert again.ok, again.failure
    finally:
        if ecu.process.poll() is None:
            assert ecu.stop(signal.SIGTERM) == 0
