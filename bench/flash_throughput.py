"""Flash throughput of the full stack against a bare can-isotp + udsoncan transfer.

Flashes a 1 MiB signed image into the simulated ECM over python-can's
in-process virtual bus, classic CAN and CAN FD, with the whole flasher
sequence (sessions, security, erase, download, checks, reset, verification),
and in the same run downloads the same bytes with nothing but udsoncan's
client and can-isotp to a minimal responder that acknowledges every block.
Both sides use the same ISO-TP parameters. It prints bytes/s of each, their
ratio, and the physical limit of real buses for scale.

    python bench/flash_throughput.py [--size-kib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import can
import isotp
import udsoncan
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection

from ecu_sim import SimulatedVehicle, demo_vehicle
from gateway import DiagChannel, Flasher
from ota_formats import build_image
from ota_formats.signing import dev_private_key
from ota_formats.uds import APP_ADDRESS
from ota_formats.vehicle import VehicleSpec

_channels = itertools.count()


def _channel() -> str:
    return f"bench-{os.getpid()}-{next(_channels)}"


@dataclass
class Measurement:
    """Bytes moved and seconds taken."""

    size: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.size / self.seconds


def full_stack(spec: VehicleSpec, image: bytes) -> tuple[Measurement, Measurement]:
    """Whole flash of the simulated ECM; returns (end-to-end, transfer phase)."""
    channel = _channel()
    fd = spec.can.fd
    ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    notifier = can.Notifier(bus, [], timeout=0.1)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            SimulatedVehicle(spec, ecu_bus, state_dir=Path(tmp), ecus=["ecm"]),
            DiagChannel(bus, notifier, spec, spec.ecu("ecm")) as diag,
        ):
            result = Flasher(diag).flash(image)
        if not result.ok:
            raise SystemExit(f"full-stack flash failed: {result.failure}")
        return Measurement(len(image), result.duration_s), Measurement(
            len(image), result.transfer_s
        )
    finally:
        notifier.stop()
        bus.shutdown()
        ecu_bus.shutdown()


def _responder(stack: isotp.TransportLayer, stop: threading.Event) -> None:
    """Acknowledge RequestDownload, TransferData and RequestTransferExit, nothing else."""
    while not stop.is_set():
        request = stack.recv(block=True, timeout=0.1)
        if not request:
            continue
        sid = request[0]
        if sid == 0x34:
            stack.send(b"\x74\x20\x0f\xff")
        elif sid == 0x36:
            stack.send(bytes([0x76, request[1]]))
        elif sid == 0x37:
            stack.send(b"\x77")
        else:
            stack.send(bytes([0x7F, sid, 0x11]))


def bare(spec: VehicleSpec, image: bytes) -> Measurement:
    """RequestDownload, TransferData blocks, RequestTransferExit: udsoncan + can-isotp only."""
    ecu = spec.ecu("ecm")
    params = ecu.isotp.params(fd=spec.can.fd)
    channel = _channel()
    fd = spec.can.fd
    server_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    client_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    server_notifier = can.Notifier(server_bus, [], timeout=0.1)
    client_notifier = can.Notifier(client_bus, [], timeout=0.1)
    mode = isotp.AddressingMode.Normal_11bits
    server = isotp.NotifierBasedCanStack(
        server_bus,
        server_notifier,
        address=isotp.Address(mode, txid=ecu.response_id, rxid=ecu.request_id),
        params=params,
    )
    client_stack = isotp.NotifierBasedCanStack(
        client_bus,
        client_notifier,
        address=isotp.Address(mode, txid=ecu.request_id, rxid=ecu.response_id),
        params={**params, "blocking_send": True},
    )
    config = dict(udsoncan.configs.default_client_config)
    config.update({"p2_timeout": 1.0, "use_server_timing": False, "request_timeout": None})
    stop = threading.Event()
    server.start()
    thread = threading.Thread(target=_responder, args=(server, stop), daemon=True)
    thread.start()
    try:
        with Client(PythonIsoTpConnection(client_stack), config=config) as client:
            started = time.monotonic()
            location = udsoncan.MemoryLocation(
                APP_ADDRESS, len(image), address_format=32, memorysize_format=32
            )
            reply = client.request_download(location)
            block = reply.service_data.max_length - 2
            counter = 1
            for offset in range(0, len(image), block):
                client.transfer_data(counter, image[offset : offset + block])
                counter = (counter + 1) & 0xFF
            client.request_transfer_exit()
            return Measurement(len(image), time.monotonic() - started)
    finally:
        stop.set()
        thread.join(1.0)
        server.stop()
        server_notifier.stop()
        client_notifier.stop()
        server_bus.shutdown()
        client_bus.shutdown()


def physical_limit(bitrate: int, data_bitrate: int | None, payload: int, frame_bytes: int) -> float:
    """Upper bound of ISO-TP payload bytes/s on a real bus (no stuffing, no gaps, BS=0).

    Classic frame: 47 overhead bits + 8 * data bytes, plus 3 bits of interframe space.
    CAN FD with bit rate switch: about 30 bits at the nominal rate, the data phase
    (ESI, DLC, data, stuff count, CRC-21 with its fixed stuff bits) at the data rate.
    """
    if data_bitrate is None:
        seconds = (47 + 8 * frame_bytes + 3) / bitrate
    else:
        data_bits = 1 + 4 + 8 * frame_bytes + 4 + 21 + 6
        seconds = 30 / bitrate + data_bits / data_bitrate
    return payload / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # udsoncan logs every probe timeout at error level; the figures are what matters here.
    logging.getLogger("UdsClient").setLevel(logging.CRITICAL)
    size = args.size_kib * 1024
    classic = demo_vehicle()
    fd = classic.with_overrides(can={"fd": True, "data_bitrate_bps": 2_000_000})
    key = dev_private_key()
    payload = os.urandom(size - 152)
    image = build_image(
        payload,
        hardware_id="HIL-ECM-HW01",
        version="9.9.9",
        anti_rollback_counter=9,
        private_key=key,
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; image {len(image)} bytes; "
        f"ISO-TP BS={classic.ecu('ecm').isotp.blocksize} STmin=0; median of {args.rounds} rounds"
    )
    print()
    print("bare:     RequestDownload + TransferData + RequestTransferExit, udsoncan and")
    print("          can-isotp only, to a responder that acknowledges every block")
    print("full:     the whole flasher sequence against the simulated ECU, end to end, with")
    print("          the ECU's modelled delays set to zero (erase time, boot time)")
    print("transfer: the TransferData phase of that flash")
    print("demo:     the whole flash with the demo vehicle's modelled delays (erase 150 ms,")
    print("          boot 50 ms), for reference")
    print()
    print(
        f"{'bus':<13}{'bare':>14}{'full':>14}{'full/bare':>10}{'transfer':>14}"
        f"{'xfer/bare':>10}{'demo':>14}"
    )
    for name, spec in (("classic 8 B", classic), ("CAN FD 64 B", fd)):
        quick = spec.with_overrides(
            ecu_defaults={"timing": {"erase_time_ms": 0, "boot_time_ms": 0}}
        )
        bare_rates, full_rates, transfer_rates, demo_rates = [], [], [], []
        for _ in range(args.rounds):
            bare_rates.append(bare(spec, image).rate)
            whole, transfer = full_stack(quick, image)
            full_rates.append(whole.rate)
            transfer_rates.append(transfer.rate)
            demo_rates.append(full_stack(spec, image)[0].rate)
        b = statistics.median(bare_rates)
        f = statistics.median(full_rates)
        t = statistics.median(transfer_rates)
        d = statistics.median(demo_rates)
        print(
            f"{name:<13}{b:>10,.0f} B/s{f:>10,.0f} B/s{f / b:>10.0%}{t:>10,.0f} B/s"
            f"{t / b:>10.0%}{d:>10,.0f} B/s"
        )
    print()
    print("physical limits of real buses (ISO-TP payload, upper bound):")
    for label, rate in (
        ("classic 500 kbit/s", physical_limit(500_000, None, 7, 8)),
        ("classic 1 Mbit/s", physical_limit(1_000_000, None, 7, 8)),
        ("CAN FD 500 k / 2 Mbit/s data", physical_limit(500_000, 2_000_000, 63, 64)),
    ):
        print(f"  {label:<30}{rate:>12,.0f} B/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
