"""End-to-end OTA time of one vehicle, split by phase, against the flasher alone.

Runs the whole OTA flow for the demo vehicle (3 ECUs, one signed image each)
in a :class:`scenarios.wire.WireWorld`: the bundled backend over gRPC on
loopback with SQLite, the simulated ECUs on an in-process virtual CAN bus, and
the vehicle's gateway on its thread. It creates a release, starts a campaign
and waits until the backend records the vehicle's action as succeeded. The
time from the campaign start to that record is split into the check-in wait,
the gateway's own phases (``DeploymentOutcome.timings_s``: verify release,
check release, download, verify images, wait, flash per ECU, confirm, report)
and the gaps between them, read from the gateway's events.

In the same run, with the same images and the same vehicle settings, the
flasher alone (:class:`gateway.Flasher` over a :class:`gateway.DiagChannel`,
``confirm=True``) flashes the three images in sequence into a fresh
:class:`ecu_sim.SimulatedVehicle`. It prints both, their ratio and the
overhead of the flow in seconds. Every round uses a fresh world and fresh ECUs
in a temporary directory and a new version with a higher anti-rollback
counter, so every round really flashes.

    python bench/ota_end_to_end.py [--rounds 3] [--size-kib 256] [--erase-ms 0]
        [--boot-ms 0] [--checkin-interval-s 0.05] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import grpc

from ecu_sim import SimulatedVehicle, demo_vehicle
from gateway import DiagChannel, Flasher, FlashStep
from ota_formats.vehicle import VehicleSpec
from scenarios.wire import WireVehicle, WireWorld, action_state, signed_image

ACTION_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 30.0
DIRECT_CHECKINS = 10
_channels = itertools.count()


def _channel() -> str:
    return f"bench-ota-{os.getpid()}-{next(_channels)}"


def version_of(round_no: int) -> tuple[str, int]:
    """The version and anti-rollback counter of round ``round_no`` (fresh in every round)."""
    return f"2.0.{round_no}", 2 + round_no


# ---------------------------------------------------------------- full flow
@dataclass
class FlowRound:
    """One OTA flow, campaign start to the backend's ``succeeded``, split by phase."""

    total_s: float
    phases_s: dict[str, float]
    """Phase name to seconds, in the order of the flow; they add up to ``total_s``."""
    timings_s: dict[str, float]
    """The gateway's ``DeploymentOutcome.timings_s`` as it reported them."""
    other_s: dict[str, float]
    """What ``other`` in ``phases_s`` is made of, read from the gateway's events."""
    checkin_rpc_s: list[float]
    """Direct ``Gateway.client.check_in`` calls after the deployment."""
    report_calls: dict[str, int]
    """``ReportDeployment`` calls of the gateway during the deployment, by reported state."""
    release_s: float
    """Creating the release (uploading the images); before the campaign, not in the total."""
    images_sha256: list[str] = field(default_factory=list)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} did not happen within {timeout_s:g} s")
        time.sleep(0.02)


def _event_time(events: Sequence[tuple[float, str]], needle: str, after: float) -> float:
    """Clock reading of the first event at or after ``after`` whose text contains ``needle``."""
    for at, text in events:
        if at >= after and needle in text:
            return at
    raise SystemExit(f"error: the gateway never said {needle!r}")


PREPARE = ("verify release", "check release", "download", "verify images")


def full_flow(
    spec: VehicleSpec, version: str, counter: int, size: int, checkin_interval_s: float
) -> FlowRound:
    """Run one campaign of a fresh release in a fresh :class:`WireWorld`; time its phases."""
    events: list[tuple[float, str]] = []
    lock = threading.Lock()

    def on_event(_vin: str, text: str) -> None:
        with lock:
            events.append((time.monotonic(), text))

    names = [e.name for e in spec.ecus]
    with (
        tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp,
        WireWorld(
            Path(tmp), [spec], checkin_interval_s=checkin_interval_s, on_event=on_event
        ) as world,
    ):
        wire = world.vehicle(spec.vin)
        _wait(
            lambda: wire.gateway is not None and wire.gateway.registered,
            READY_TIMEOUT_S,
            "the gateway's registration",
        )
        time.sleep(3 * checkin_interval_s)  # into its idle check-ins
        started = time.monotonic()
        release = world.release_for(spec.vin, version, counter, size=size)
        release_s = time.monotonic() - started

        reports = _count_reports(wire)
        seen = len(wire.outcomes)
        t0 = time.monotonic()
        wall0 = time.time()
        campaign_id = world.operator.start_campaign(release.release_id, [spec.vin], name=version)
        t1 = time.monotonic()
        # Wait on the gateway's outcome (it comes after the final report was acknowledged)
        # rather than poll the operator API: the poll's RPCs would load the process measured.
        _wait(lambda: len(wire.outcomes) > seen, ACTION_TIMEOUT_S, "the deployment's end")
        action = world.operator.wait_action(campaign_id, spec.vin, timeout_s=10.0)
        if action_state(action) != "succeeded":
            raise SystemExit(
                f"error: the deployment ended {action_state(action)}: "
                f"{action.failure_step}: {action.failure_reason}"
            )
        # When the backend recorded ``succeeded``; its clock is this process's wall clock.
        total_s = action.updated_at.ToNanoseconds() / 1e9 - wall0
        timings = dict(wire.outcomes[seen].timings_s)
        report_calls = dict(reports)
        checkins = _direct_checkins(wire)
        with lock:
            log = list(events)

    offered = _event_time(log, " offered", t0)
    verified = _event_time(log, "image(s) verified", offered)
    flashing = [_event_time(log, f": flashing {n} ", offered) for n in names]
    flash = {n: timings.get(f"flash {n}", 0.0) for n in names}
    phases: dict[str, float] = {"start campaign": t1 - t0, "check-in": offered - t1}
    phases.update({key: timings.get(key, 0.0) for key in PREPARE})
    phases["wait"] = timings.get("wait", 0.0)
    phases.update({f"flash {n}": flash[n] for n in names})
    phases["between ECUs"] = sum(
        flashing[i + 1] - flashing[i] - flash[names[i]] for i in range(len(names) - 1)
    )
    phases["confirm"] = timings.get("confirm", 0.0)
    phases["report"] = timings.get("report", 0.0)
    other = total_s - sum(phases.values())
    phases["other"] = other
    # Where "other" goes: what the gateway's timings leave out between its events.
    in_prepare = (verified - offered) - sum(timings.get(key, 0.0) for key in PREPARE)
    before_flash = flashing[0] - verified - phases["wait"]
    other_s = {
        "preparing (state saves, progress reports)": in_prepare,
        "before the first flash (state save, report, image read)": before_flash,
        "finishing (inventory read, reporter flush, state saves)": other
        - in_prepare
        - before_flash,
    }
    return FlowRound(
        total_s=total_s,
        phases_s=phases,
        timings_s=timings,
        other_s=other_s,
        checkin_rpc_s=checkins,
        report_calls=report_calls,
        release_s=release_s,
        images_sha256=[i.sha256 for i in release.images],
    )


def _count_reports(wire: WireVehicle) -> Counter[str]:
    """Count the gateway's ``report`` calls by state (a thin wrapper on its backend client)."""
    gateway = wire.gateway
    assert gateway is not None
    calls: Counter[str] = Counter()
    report = gateway.client.report

    def counted(deployment_id: str, state: str, **fields: Any) -> tuple[str, bool]:
        calls[state] += 1
        return report(deployment_id, state, **fields)

    setattr(gateway.client, "report", counted)  # noqa: B010 (an instance attribute)
    return calls


def _direct_checkins(wire: WireVehicle) -> list[float]:
    """Time ``Gateway.client.check_in`` a few times, as the idle gateway calls it."""
    gateway = wire.gateway
    assert gateway is not None
    seconds = []
    for _ in range(DIRECT_CHECKINS):
        started = time.monotonic()
        gateway.client.check_in(state="idle", inventory=gateway.last_inventory)
        seconds.append(time.monotonic() - started)
    return seconds


# ------------------------------------------------------------ flasher alone
@dataclass
class FlasherRound:
    """The flasher alone on the same images: per-ECU seconds, and its confirm step in them."""

    total_s: float
    flash_s: dict[str, float]
    confirm_s: dict[str, float]
    images_sha256: list[str]
    image_bytes: int


def flasher_alone(spec: VehicleSpec, version: str, counter: int, size: int) -> FlasherRound:
    """Flash the round's images into fresh simulated ECUs, one after another, confirming each."""
    names = [e.name for e in spec.ecus]
    images = [(n, signed_image(spec.ecu(n), version, counter, size=size)) for n in names]
    anchors = spec.trust_anchor_keys()
    channel = _channel()
    fd = spec.can.fd
    ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    notifier = can.Notifier(bus, [], timeout=0.1)
    # As in the gateway: one channel per ECU, all open on the bus's notifier.
    diags = {n: DiagChannel(bus, notifier, spec, spec.ecu(n)) for n in names}
    flash: dict[str, float] = {}
    confirm: dict[str, float] = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-ota-flasher-") as tmp,
            SimulatedVehicle(spec, ecu_bus, state_dir=Path(tmp)),
        ):
            for diag in diags.values():
                diag.open()
            started = time.monotonic()
            for name, image in images:
                result = Flasher(diags[name], trust_anchors=anchors).flash(image)
                if not result.ok or not result.confirmed:
                    raise SystemExit(f"error: the flasher alone failed on {name}: {result.outcome}")
                flash[name] = result.duration_s
                confirm[name] = result.step_durations_s.get(FlashStep.CONFIRM, 0.0)
            total_s = time.monotonic() - started
    finally:
        for diag in diags.values():
            diag.close()
        notifier.stop()
        bus.shutdown()
        ecu_bus.shutdown()
    return FlasherRound(
        total_s=total_s,
        flash_s=flash,
        confirm_s=confirm,
        images_sha256=[hashlib.sha256(image).hexdigest() for _, image in images],
        image_bytes=len(images[0][1]),
    )


# --------------------------------------------------------------------- main
LABELS = {
    "start campaign": "operator CreateCampaign + StartCampaign calls",
    "check-in": "to the gateway's next check-in, and its call",
    "verify release": "GetDeployment, release signature",
    "check release": "read the ECUs: hardware, anti-rollback",
    "download": "the images over gRPC, to files",
    "verify images": "SHA-256 and signature of each image",
    "wait": "update preconditions (restbus signals)",
    "between ECUs": "precondition check on fresh frames, state saves",
    "confirm": "every ECU, once all are flashed",
    "report": "the final report call",
    "other": "state saves, reporter flush, inventory reads",
}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise(
    flows: list[FlowRound], alone: list[FlasherRound], names: list[str]
) -> dict[str, Any]:
    """Medians over the rounds, shares of the total, ratios and the overhead."""
    total = _median([f.total_s for f in flows])
    alone_total = _median([a.total_s for a in alone])
    phases = {key: _median([f.phases_s[key] for f in flows]) for key in flows[0].phases_s}
    flashing = sum(phases[f"flash {n}"] for n in names) + phases["confirm"]
    # The rounds are pairs (same images, same versions): compare within each pair.
    pairs = []
    for f, a in zip(flows, alone, strict=True):
        flow_flashing = sum(f.phases_s[f"flash {n}"] for n in names) + f.phases_s["confirm"]
        pairs.append((f.total_s - a.total_s, f.total_s - flow_flashing, flow_flashing - a.total_s))
    states = sorted({state for f in flows for state in f.report_calls})
    return {
        "full_flow": {
            "total_s": total,
            "total_s_of_rounds": [f.total_s for f in flows],
            "phases_s": phases,
            "shares": {key: value / total for key, value in phases.items()},
            "other_s": {k: _median([f.other_s[k] for f in flows]) for k in flows[0].other_s},
            "gateway_timings_s": {
                k: _median([f.timings_s.get(k, 0.0) for f in flows]) for k in flows[0].timings_s
            },
            "flashing_s": flashing,
            "checkin_call_s": _median([x for f in flows for x in f.checkin_rpc_s]),
            "report_calls": {
                state: _median([f.report_calls.get(state, 0) for f in flows]) for state in states
            },
            "create_release_s": _median([f.release_s for f in flows]),
        },
        "flasher_alone": {
            "total_s": alone_total,
            "total_s_of_rounds": [a.total_s for a in alone],
            "flash_s": {n: _median([a.flash_s[n] for a in alone]) for n in names},
            "confirm_step_s": {n: _median([a.confirm_s[n] for a in alone]) for n in names},
            "image_bytes": alone[0].image_bytes,
        },
        "ratio": total / alone_total,
        "overhead_s": _median([p[0] for p in pairs]),
        "overhead_s_of_rounds": [p[0] for p in pairs],
        "overhead_outside_flashing_s": _median([p[1] for p in pairs]),
        "overhead_in_flashing_s": _median([p[2] for p in pairs]),
        "flashing_ratio": flashing / alone_total,
    }


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values) + " s"


def print_text(summary: dict[str, Any], args: argparse.Namespace, spec: VehicleSpec) -> None:
    """Print the figures as two tables and the comparison."""
    flow = summary["full_flow"]
    alone = summary["flasher_alone"]
    names = [e.name for e in spec.ecus]
    demo = demo_vehicle().ecu(names[0]).timing
    timing = spec.ecu(names[0]).timing
    total = flow["total_s"]
    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs; "
        f"vehicle {spec.name} ({', '.join(names)}), one signed image of "
        f"{alone['image_bytes']:,} bytes ({args.size_kib} KiB payload) each; "
        f"median of {args.rounds} rounds"
    )
    print(
        f"ECU modelled delays in both measurements: erase {timing.erase_time_ms} ms, boot "
        f"{timing.boot_time_ms} ms (the demo vehicle's own: erase {demo.erase_time_ms} ms, "
        f"boot {demo.boot_time_ms} ms; see --erase-ms/--boot-ms)"
    )
    print(
        f"gateway check-in interval {args.checkin_interval_s:g} s: the check-in wait depends "
        "on it (up to one interval, plus the call)"
    )
    print()
    print("full flow: the backend over gRPC on loopback (SQLite), the gateway on its thread,")
    print("           the simulated ECUs on a virtual bus; from the campaign start until the")
    print("           backend records the vehicle's action as succeeded")
    print(f"  {'phase':<16}{'':<50}{'s':>8}{'share':>8}")
    for key, value in flow["phases_s"].items():
        label = LABELS.get(key, "the flasher, image left on trial")
        print(f"  {key:<16}{label:<50}{value:>8.3f}{flow['shares'][key]:>8.1%}")
    print(f"  {'total':<66}{total:>8.3f}{1:>8.0%}")
    print(
        "  (medians of the rounds, which need not add up to the median total; totals "
        f"{_seconds(flow['total_s_of_rounds'])})"
    )
    print("  'other', from the gateway's events:")
    for what, seconds in flow["other_s"].items():
        print(f"    {what:<62}{seconds:>8.3f}")
    calls = flow["report_calls"]
    print(
        f"  one CheckIn call (Gateway.client.check_in, {DIRECT_CHECKINS} per round): "
        f"{flow['checkin_call_s'] * 1000:.1f} ms"
    )
    print(
        f"  ReportDeployment calls per deployment: {sum(calls.values()):.0f} ("
        + ", ".join(f"{state} {n:.0f}" for state, n in calls.items())
        + ")"
    )
    print(
        f"  creating the release (uploading the images; before the campaign, not in the "
        f"total): {flow['create_release_s']:.3f} s"
    )
    print()
    print("flasher alone: Flasher (confirm=True) over a DiagChannel, the same images one after")
    print("               another into a fresh SimulatedVehicle on a virtual bus")
    print(f"  {'':<10}{'full flow s':>12}{'alone s':>10}{'its confirm step s':>20}")
    for n in names:
        print(
            f"  {n:<10}{flow['phases_s'][f'flash {n}']:>12.3f}{alone['flash_s'][n]:>10.3f}"
            f"{alone['confirm_step_s'][n]:>20.3f}"
        )
    confirm_alone = sum(alone["confirm_step_s"].values())
    print(f"  {'confirm':<10}{flow['phases_s']['confirm']:>12.3f}{'':>10}{confirm_alone:>20.3f}")
    print(f"  {'total':<10}{flow['flashing_s']:>12.3f}{alone['total_s']:>10.3f}")
    print(f"  (totals of the flasher alone {_seconds(alone['total_s_of_rounds'])})")
    print()
    print(f"full flow / flasher alone: {summary['ratio']:.2f}x (median totals)")
    print(
        f"overhead of the full flow: {summary['overhead_s']:.3f} s "
        f"({summary['overhead_s'] / total:.0%} of the full flow; median of the rounds' "
        f"differences {_seconds(summary['overhead_s_of_rounds'])})"
    )
    print(
        f"  outside flashing (every phase but the flashes and the confirm): "
        f"{summary['overhead_outside_flashing_s']:.3f} s"
    )
    print(
        f"  in flashing (flashes + confirm in the flow, {summary['flashing_ratio']:.2f}x the "
        f"flasher alone): {summary['overhead_in_flashing_s']:+.3f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="median of N rounds (default 3)")
    parser.add_argument(
        "--size-kib", type=int, default=256, help="payload of each image in KiB (default 256)"
    )
    parser.add_argument(
        "--erase-ms",
        type=int,
        default=0,
        help="the ECUs' modelled erase time (default 0: the figures are about the software)",
    )
    parser.add_argument(
        "--boot-ms", type=int, default=0, help="the ECUs' modelled boot time (default 0)"
    )
    parser.add_argument(
        "--checkin-interval-s",
        type=float,
        default=0.05,
        help="the gateway's check-in interval (default 0.05)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.rounds < 1 or args.size_kib < 1:
        parser.error("--rounds and --size-kib must be at least 1")
    if args.erase_ms < 0 or args.boot_ms < 0 or args.checkin_interval_s <= 0:
        parser.error("--erase-ms and --boot-ms must not be negative, the interval positive")
    # udsoncan logs every boot probe's timeout at error level; the figures are what matters.
    logging.getLogger("UdsClient").setLevel(logging.CRITICAL)

    spec = demo_vehicle().with_overrides(
        ecu_defaults={"timing": {"erase_time_ms": args.erase_ms, "boot_time_ms": args.boot_ms}}
    )
    names = [e.name for e in spec.ecus]
    size = args.size_kib * 1024
    flows: list[FlowRound] = []
    alone: list[FlasherRound] = []
    for round_no in range(args.rounds):
        version, counter = version_of(round_no)
        # Alternate the order so that neither side always runs on a warmer process.
        if round_no % 2:
            alone.append(flasher_alone(spec, version, counter, size))
            flows.append(full_flow(spec, version, counter, size, args.checkin_interval_s))
        else:
            flows.append(full_flow(spec, version, counter, size, args.checkin_interval_s))
            alone.append(flasher_alone(spec, version, counter, size))
        if flows[-1].images_sha256 != alone[-1].images_sha256:
            raise SystemExit("error: the flasher alone did not get the release's images")
    summary = summarise(flows, alone, names)
    if args.json:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "grpcio": grpc.__version__,
                    "cpus": os.cpu_count(),
                    "vehicle": spec.name,
                    "ecus": names,
                    "rounds": args.rounds,
                    "image_payload_bytes": size,
                    "erase_time_ms": args.erase_ms,
                    "boot_time_ms": args.boot_ms,
                    "checkin_interval_s": args.checkin_interval_s,
                    **summary,
                },
                indent=2,
            )
        )
    else:
        print_text(summary, args, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
