"""``hil bench``: benches from ``hil.toml``, their power supply and ignition, the sim bench.

Exit status: 0 done; 1 the bench did not do it (an instrument unreachable, silent
or garbled, the sim bench not running); 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from hil.bench import ENV_CONFIG, IGNITION, SIM_BENCH, Bench, BenchPartMissing
from hil.bench.paths import user_config_dir
from hil.bench.sim import SimBench
from hil.cli._bench import add_bench_options, bench_config, bench_from, guarded
from hil.cli._bus import add_bus_options, bus_config, bus_given
from hil.cli._vehicle import add_vehicle_option, vehicle_from
from hil.errors import UsageError


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite, non-negative number")
    return value


def add_subparser(subparsers: Any) -> None:
    """Register ``hil bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="benches (hil.toml): power supply, ignition, status; the simulated bench",
        description="Work with a bench from hil.toml (or the built-in simulated bench 'sim'): "
        "its power supply and ignition relay. Exit status 1 when the bench fails "
        "(an instrument unreachable or not answering), 2 on usage or configuration errors.",
    )
    actions = parser.add_subparsers(dest="bench_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="benches and where each is defined")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_bench_options(listing)
    listing.set_defaults(run=run_list)

    show = actions.add_parser("show", help="the resolved configuration of a bench")
    show.add_argument("name", nargs="?", metavar="NAME", help="the bench (default: as --bench)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add_bench_options(show)
    show.set_defaults(run=run_show)

    power = actions.add_parser("power", help="the bench's power supply (terminal 30)")
    power_actions = power.add_subparsers(dest="power_command", metavar="ACTION")
    power_actions.required = True
    for name, text in (
        ("on", "set the nominal voltage and current limit, switch the output on"),
        ("off", "switch the output off"),
    ):
        action = power_actions.add_parser(name, help=text)
        add_bench_options(action)
        action.set_defaults(run=run_power)
    cycle = power_actions.add_parser("cycle", help="off, wait, on")
    cycle.add_argument(
        "--off-s", type=_non_negative, default=1.0, metavar="S", help="time off (default 1 s)"
    )
    cycle.add_argument(
        "--on-s",
        type=_non_negative,
        default=0.0,
        metavar="S",
        help="time to wait after switching on, e.g. the ECUs' boot (default 0)",
    )
    add_bench_options(cycle)
    cycle.set_defaults(run=run_power)
    setting = power_actions.add_parser("set", help="change the voltage and/or current limit")
    setting.add_argument("--volts", type=_non_negative, metavar="V", help="voltage set point")
    setting.add_argument("--amps", type=_non_negative, metavar="A", help="current limit")
    add_bench_options(setting)
    setting.set_defaults(run=run_power)

    ignition = actions.add_parser("ign", help="ignition (terminal 15) on or off")
    ignition.add_argument("state", choices=("on", "off"))
    add_bench_options(ignition)
    ignition.set_defaults(run=run_ignition)

    relay = actions.add_parser("relay", help="switch any named relay line of the bench")
    relay.add_argument("line", metavar="LINE", help="a line of the bench's relays.lines")
    relay.add_argument("state", choices=("on", "off"))
    add_bench_options(relay)
    relay.set_defaults(run=run_relay)

    status = actions.add_parser(
        "status", help="measured voltage and current, output state, relay states"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_bench_options(status)
    status.set_defaults(run=run_status)

    sim = actions.add_parser("sim", help="the simulated bench process")
    sim_actions = sim.add_subparsers(dest="sim_command", metavar="ACTION")
    sim_actions.required = True
    run = sim_actions.add_parser(
        "run",
        help="serve the simulated vehicle, its power supply and ignition relay until stopped",
        description="Run the simulated vehicle's ECUs on a bus (by default a python-can-remote "
        "hub on 127.0.0.1 that other processes join), a simulated Korad supply wired to the "
        "ECUs' power and a simulated LCUS relay board whose channel 1 is terminal 15, both on "
        "loopback TCP ports. The bus and ports go to the state file ($HIL_STATE_DIR/"
        "sim-bench.json), where the 'sim' bench finds them. Stops on SIGINT or SIGTERM.",
    )
    add_vehicle_option(run)
    run.add_argument(
        "--nvm-dir",
        type=Path,
        metavar="DIR",
        help="NVM of the ECUs, kept between runs (default: $HIL_STATE_DIR/sim-bench/nvm)",
    )
    run.add_argument("--unpowered", action="store_true", help="start with the supply's output off")
    run.add_argument(
        "--ignition-off", action="store_true", help="start with the ignition relay off"
    )
    add_bus_options(run)
    run.set_defaults(run=run_sim)


# ---------------------------------------------------------------------------- output


def _render(value: Any, indent: int = 0) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{key}:")
                lines += _render(item, indent + 1)
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: (none)")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_scalar(item) for item in value) or "-"
    return str(value)


# ---------------------------------------------------------------------------- verbs


def run_list(args: argparse.Namespace) -> int:
    """List the benches, where each comes from, and which one is the default."""
    config = bench_config(args)
    chosen, origin = config.select(args.bench)
    entries: list[dict[str, Any]] = []
    for known in config.entries():
        status = None
        if known.name == SIM_BENCH:
            sim = config.bench(SIM_BENCH)
            status = "running" if sim.unavailable is None else "not running"
        entries.append(
            {
                "name": known.name,
                "source": known.source,
                "description": known.description,
                "default": known.name == chosen,
                "status": status,
            }
        )
    if args.json:
        print(json.dumps({"default": chosen, "default_from": origin, "benches": entries}))
        return 0
    width = max(len(entry["name"]) for entry in entries)
    source_width = max(len(entry["source"]) for entry in entries)
    for entry in entries:
        mark = "*" if entry["default"] else " "
        extra = f" ({entry['status']})" if entry["status"] else ""
        print(
            f"{mark} {entry['name']:<{width}}  {entry['source']:<{source_width}}  "
            f"{entry['description']}{extra}".rstrip()
        )
    if chosen not in config.names():
        print(f"default: {chosen} (from {origin}) is not a known bench")
    else:
        print(f"default: {chosen} (from {origin})")
    if config.file is not None:
        print(f"configuration: {config.file.name} ({config.file.location.origin})")
    else:
        print(
            f"configuration: none found (--hil-config, ${ENV_CONFIG}, ./hil.toml, "
            f"{user_config_dir() / 'hil.toml'})"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the resolved configuration of a bench."""
    if args.name and args.bench and args.name != args.bench:
        raise UsageError(f"two benches named: {args.name} and --bench {args.bench}")
    bench = bench_from(args, args.name)
    described = bench.describe()
    if args.json:
        print(json.dumps(described, default=str))
    else:
        print("\n".join(_render(described)))
    return 0


def run_power(args: argparse.Namespace) -> int:
    """Switch or set the bench's power supply."""
    bench = bench_from(args)
    command = args.power_command
    if command == "set" and args.volts is None and args.amps is None:
        raise UsageError("power set needs --volts and/or --amps")
    if bench.power is None:
        raise BenchPartMissing(f"bench {bench.name} has no power supply")

    def act() -> int:
        with bench.connect() as rig:
            power = rig.power
            if command == "on":
                power.on()
            elif command == "off":
                power.off()
            elif command == "cycle":
                print(f"{bench.name}: power off for {args.off_s:g} s", flush=True)
                power.cycle(off_s=args.off_s, on_s=args.on_s)
            else:
                power.set(volts=args.volts, amps=args.amps)
            reading = power.read()
        print(f"{bench.name}: power {command}: {reading}")
        return 0

    return guarded(args, act)


def _switch_line(args: argparse.Namespace, bench: Bench, line_name: str) -> int:
    if line_name not in bench.relays.lines:
        known = ", ".join(bench.relays.lines) or "none"
        raise BenchPartMissing(
            f"bench {bench.name} has no relay line {line_name!r} (it has: {known})"
        )

    def act() -> int:
        with bench.connect() as rig:
            line = rig.line(line_name)
            line.set(args.state == "on")
            state = line.state()
        shown = "unknown" if state is None else "on" if state else "off"
        print(
            f"{bench.name}: {line_name} {args.state} "
            f"({line.board_name} channel {line.channel}; reads {shown})"
        )
        return 0

    return guarded(args, act)


def run_ignition(args: argparse.Namespace) -> int:
    """Switch the ignition line (terminal 15)."""
    return _switch_line(args, bench_from(args), IGNITION)


def run_relay(args: argparse.Namespace) -> int:
    """Switch a named relay line."""
    return _switch_line(args, bench_from(args), args.line)


def run_status(args: argparse.Namespace) -> int:
    """Print what the instruments say: supply output and measurements, relay lines."""
    bench = bench_from(args)

    def act() -> int:
        report: dict[str, Any] = {"bench": bench.name, "source": bench.source}
        with bench.connect() as rig:
            if bench.power is not None:
                reading = rig.power.read()
                report["power"] = {
                    "kind": bench.power.kind,
                    "port": bench.power.port,
                    "output_on": reading.output_on,
                    "volts": reading.volts,
                    "amps": reading.amps,
                    "set_volts": reading.set_volts,
                    "limit_amps": reading.limit_amps,
                    "window": bench.power.window_text,
                }
            else:
                report["power"] = None
            lines: dict[str, Any] = {}
            for line in rig.lines():
                lines[line.name] = {
                    "board": line.board_name,
                    "channel": line.channel,
                    "on": line.state(),
                    "reported": line.reports_state,
                }
            report["lines"] = lines
        if args.json:
            print(json.dumps(report))
            return 0
        print(f"bench {bench.name} ({bench.source})")
        power = report["power"]
        if power is None:
            print("power: none configured")
        else:
            output = "on" if power["output_on"] else "off"
            print(
                f"power: {power['kind']} on {power['port']}: output {output}, "
                f"{power['volts']:.2f} V {power['amps']:.3f} A measured "
                f"(set {power['set_volts']:.2f} V, limit {power['limit_amps']:.3f} A); "
                f"flashing window {power['window']}"
            )
        if not lines:
            print("relay lines: none configured")
        for name, line_report in lines.items():
            on = line_report["on"]
            shown = (
                "unknown (the board does not report it)" if on is None else ("on" if on else "off")
            )
            if on is not None and not line_report["reported"]:
                shown += " (as last set; the board does not report it)"
            print(f"{name}: {shown} ({line_report['board']} channel {line_report['channel']})")
        return 0

    return guarded(args, act)


# ---------------------------------------------------------------------------- sim run


def _bus_config(args: argparse.Namespace) -> dict[str, Any] | None:
    if not bus_given(args):
        return None
    if "timing" in args:
        raise UsageError("--timing cannot be passed on to the sim bench's clients; use -b")
    config = bus_config(args)
    # Clients of the sim bench open the same bus: not a single-handle one.
    config.pop("single_handle", None)
    if config.get("interface") == "virtual":
        raise UsageError(
            "a virtual bus is reachable from this process only; leave out the bus options "
            "(a loopback hub is served) or give one other processes can join"
        )
    return config


def run_sim(args: argparse.Namespace) -> int:
    """Serve the simulated bench until a signal arrives."""
    bus_config = _bus_config(args)
    vehicle = vehicle_from(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sim = SimBench(
            vehicle=vehicle,
            nvm_dir=args.nvm_dir,
            bus_config=bus_config,
            powered=not args.unpowered,
            ignition=not args.ignition_off,
        )
        with sim:
            state = sim.state
            bus = ", ".join(f"{key}={value}" for key, value in state.bus.items())
            print(f"vehicle {vehicle.name} ({vehicle.vin}): {', '.join(sim.vehicle.ecus)}")
            print(f"bus: {bus}")
            print(f"power supply: korad on {state.power_port} (output to the ECUs' supply)")
            print(f"relays: lcus on {state.relay_port} (channel {state.ignition_channel}: KL15)")
            print(f"state: {sim.state_file}; NVM in {state.nvm_dir}")
            print("serving; Ctrl+C or SIGTERM stops", flush=True)
            while not stop.wait(0.2):
                pass
        print("stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
