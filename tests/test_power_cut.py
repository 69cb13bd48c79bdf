"""Power cuts as process kills: ``hil ecu run`` killed with SIGKILL in each phase of a flash.

The ECU runs in its own process and reaches this test's virtual bus through
python-can-remote's server on loopback, as it would on a bench without vcan.
After the kill a new process starts from the same NVM directory; it must boot
a valid image (the old one, or the new one once it was accepted).
"""

from __future__ import annotations

import hashlib
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from can_remote import RemoteServer
from helpers import make_image, wait_for

from ecu_sim.nvm import Nvm
from gateway import DiagChannel, Flasher, FlashProgress, FlashStep

pytestmark = pytest.mark.timeout(300)


class EcuProcess:
    """``hil ecu run`` for the ECM in a child process, on the remote bus."""

    def __init__(self, url: str, state_dir: Path, *faults: str) -> None:
        command = [sys.executable, "-m", "hil", "ecu", "run", "--state-dir", str(state_dir)]
        command += ["--ecu", "ecm", "-i", "remote", "-c", url]
        for fault in faults:
            command += ["--fault", fault]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_line("serving", 30)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {text!r} from hil ecu run: {''.join(self.output)}"
                ) from None
            if text in line:
                return

    def _close(self) -> None:
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(10)
        self._close()
        return code


@pytest.fixture
def remote(channel: str) -> Iterator[str]:
    """python-can-remote's server on a free loopback port, sharing this test's virtual channel."""
    server = RemoteServer("127.0.0.1", 0, interface="virtual", channel=channel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(5)
    wait_for(lambda: channel not in can.interfaces.virtual.channels, timeout=5)


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
]


@pytest.mark.parametrize(
    ("phase", "after_bytes", "faults", "allowed"), PHASES, ids=[str(p[0]) for p in PHASES]
)
def test_process_kill_in_each_phase(
    remote, tester, tmp_path, demo, phase, after_bytes, faults, allowed
):
    state_dir = tmp_path / "state"
    bus, notifier = tester
    ecu = EcuProcess(remote, state_dir, *faults)
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
        ecu = EcuProcess(remote, state_dir)
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
            assert ecu.terminate() == 0
