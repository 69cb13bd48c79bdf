"""Test helpers: a raw ISO-TP tester for exact bytes, a fake clock, image builders."""

from __future__ import annotations

import hashlib
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import can
import isotp

from ota_formats import build_image
from ota_formats.signing import dev_private_key
from ota_formats.vehicle import EcuSpec, VehicleSpec


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RawTester:
    """Sends raw request bytes to one ECU and collects every raw reply (exact bytes)."""

    def __init__(self, bus: can.BusABC, notifier: can.Notifier, vehicle: VehicleSpec, ecu: EcuSpec):
        params = ecu.isotp.params(fd=vehicle.can.fd)
        params["blocking_send"] = True
        mode = isotp.AddressingMode.Normal_11bits
        self.stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=isotp.Address(mode, txid=ecu.request_id, rxid=ecu.response_id),
            params=params,
        )
        self.functional_stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=isotp.AsymmetricAddress(
                tx_addr=isotp.Address(mode, txid=vehicle.functional_request_id, tx_only=True),
                rx_addr=isotp.Address(mode, rxid=0x7FE, rx_only=True),
            ),
            params=params,
        )
        self.stack.start()
        self.functional_stack.start()

    def close(self) -> None:
        self.stack.stop()
        self.functional_stack.stop()

    def drain(self) -> None:
        while self.stack.recv(block=False) is not None:
            pass

    def collect(self, timeout: float = 0.3) -> list[bytes]:
        """Every reply until ``timeout`` passes without one (0x78 extends the wait)."""
        replies: list[bytes] = []
        while True:
            data = self.stack.recv(block=True, timeout=timeout)
            if data is None:
                return replies
            replies.append(bytes(data))
            if not (len(data) == 3 and data[0] == 0x7F and data[2] == 0x78):
                # A final reply: give a short grace period for anything unexpected after it.
                timeout = 0.05

    def request(self, payload: bytes | str, timeout: float = 0.3) -> list[bytes]:
        """Send physically; return all replies."""
        data = bytes.fromhex(payload) if isinstance(payload, str) else payload
        self.drain()
        self.stack.send(data)
        return self.collect(timeout)

    def ask(self, payload: bytes | str, timeout: float = 0.3) -> str:
        """Send physically; return the single final reply as hex (asserts there is one)."""
        replies = [
            r for r in self.request(payload, timeout) if r[:1] != b"\x7f" or r[2:3] != b"\x78"
        ]
        assert len(replies) == 1, f"expected one reply to {payload!r}, got {replies!r}"
        return replies[0].hex()

    def functional(self, payload: bytes | str, timeout: float = 0.2) -> list[bytes]:
        """Send on the functional id; return the target ECU's replies."""
        data = bytes.fromhex(payload) if isinstance(payload, str) else payload
        self.drain()
        self.functional_stack.send(data)
        return self.collect(timeout)


def payload_bytes(size: int, seed: str = "payload") -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def make_image(
    ecu: EcuSpec,
    version: str = "2.0.0",
    counter: int = 2,
    size: int = 16 * 1024,
    *,
    key=None,
    hardware_id: str | None = None,
) -> bytes:
    return build_image(
        payload_bytes(size, f"{ecu.name}-{version}"),
        hardware_id=hardware_id or ecu.hardware_id,
        version=version,
        anti_rollback_counter=counter,
        private_key=key or dev_private_key(),
    )


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Unlocked:
    tester: RawTester
    secret: bytes


class HilRun:
    """``hil ARGS`` in a child process (output merged, kept); waits for ``ready`` if given."""

    def __init__(self, *args: str, ready: str | None = None, timeout: float = 30) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hil", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.command = " ".join(["hil", *args[:2]])
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if ready is not None:
            self.wait_for_line(ready, timeout)

    @property
    def text(self) -> str:
        return "".join(self.output)

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
                raise AssertionError(f"no {text!r} from {self.command}: {self.text}") from None
            if text in line:
                return

    def stop(self, signum: int) -> int:
        """Send ``signum``; return the exit status once the output is all read."""
        self.process.send_signal(signum)
        code = self.process.wait(20)
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class HilEcuRun(HilRun):
    """``hil ecu run ARGS`` in a child process, started and serving."""

    def __init__(self, *args: str, timeout: float = 30) -> None:
        super().__init__("ecu", "run", *args, ready="serving", timeout=timeout)
