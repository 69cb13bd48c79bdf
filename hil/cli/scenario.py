"""``hil scenario``: list and run SimPy scenarios, and calibrate the bus model of modeled ones."""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hil.cli._vehicle import add_vehicle_option, vehicle_from
from hil.errors import HilError, UsageError
from scenarios.calibrate import Calibration, calibrate
from scenarios.core import Scenario, ScenarioError, execute
from scenarios.registry import builtin_scenarios, get_scenario, load_scenario_file, make_params

DEFAULT_REPORTS = Path("scenario-reports")
DEFAULT_BUS_MODEL = Path("bus-model.toml")
DEFAULT_SIZES_KIB = (16, 64, 256)
# Without a terminal, progress goes out as plain lines; a fleet reports its status
# many times a second, so at most one line per this many seconds.
PLAIN_STATUS_INTERVAL_S = 1.0


def _non_negative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_subparser(subparsers: Any) -> None:
    """Register ``hil scenario list|run|calibrate``."""
    parser = subparsers.add_parser(
        "scenario",
        help="list, run and calibrate SimPy scenarios (flash, rollback, fleets, rollouts)",
        description="Scenarios build a world of backend, gateways and simulated vehicles "
        "(wire fidelity: real frames and gRPC, wall-clock time) or a modeled fleet (virtual "
        "time, durations from a bus model), drive it on a timeline, inject faults and check "
        "the outcome.",
    )
    actions = parser.add_subparsers(dest="scenario_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list the built-in scenarios")
    listing.set_defaults(run=run_list)

    run = actions.add_parser(
        "run",
        help="run a scenario and write its report",
        description="Run a built-in scenario by name, or a scenario file (TOML: scenario, "
        "seed, [params]). Progress shows while it runs; then a summary, and report.json "
        "(everything, the whole event log) and report.html (checks, figures, plots, the "
        "log) in the report directory. Exit status 0 if every check held, 1 if one failed "
        "or the run broke, 2 for a bad name, file or parameter.",
    )
    run.add_argument("target", metavar="NAME|FILE", help="scenario name, or scenario file")
    run.add_argument(
        "--seed", type=_non_negative, metavar="N", help="random seed (default: the file's, or 0)"
    )
    run.add_argument(
        "--vehicles", type=_positive, metavar="N", help="number of vehicles (parameter vehicles)"
    )
    run.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='set a parameter; VALUE as in TOML (1, 0.5, true, [1, 2], "text"; a bare word '
        "is text); KEY may be dotted (failure.flash=0.01). Repeatable.",
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="report directory, new or empty; the scenario keeps its data there too "
        f"(default: {DEFAULT_REPORTS}/NAME-SEED, numbered if taken)",
    )
    run.add_argument(
        "--no-log",
        action="store_true",
        help="keep only the event count and digest, not the entries (large fleets)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    run.set_defaults(run=run_scenario)

    cal = actions.add_parser(
        "calibrate",
        help="measure real flashes of the simulated vehicle and write a bus model",
        description="Flash the simulated vehicle's ECUs over an in-process virtual bus with "
        "the real UDS flasher at several image sizes, derive the bus model's figures (host "
        "cost per frame and per request, fixed steps, erase, boot) and write them as TOML "
        "for the modeled scenarios (their bus_model parameter). Prints the figures and the "
        "model's prediction against each measured flash.",
    )
    cal.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_BUS_MODEL,
        metavar="FILE",
        help=f"bus model file to write (default: {DEFAULT_BUS_MODEL})",
    )
    cal.add_argument(
        "--size-kib",
        type=_positive,
        nargs="+",
        default=list(DEFAULT_SIZES_KIB),
        metavar="KIB",
        help="image payload sizes, at least two "
        f"(default: {' '.join(map(str, DEFAULT_SIZES_KIB))})",
    )
    cal.add_argument(
        "--ecu",
        action="append",
        metavar="NAME",
        help="ECU to flash (repeatable; default: ecm)",
    )
    cal.add_argument(
        "--rounds", type=_positive, default=1, metavar="N", help="flashes per size (default: 1)"
    )
    add_vehicle_option(cal)
    cal.set_defaults(run=run_calibrate)


# --------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    """Print the known scenarios."""
    console = Console(highlight=False, soft_wrap=True)
    scenarios = builtin_scenarios()
    if not scenarios:
        console.print("no scenarios")
        return 0
    table = Table()
    for column in ("name", "fidelity", "summary"):
        table.add_column(column, overflow="fold")
    for name, scenario in scenarios.items():
        table.add_row(name, scenario.fidelity, scenario.summary)
    console.print(table)
    return 0


# ---------------------------------------------------------------------------- run


def parse_value(text: str) -> Any:
    """Return ``text`` read as a TOML value, or as itself when it is not one (a bare word)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_settings(params: dict[str, Any], settings: Sequence[str]) -> dict[str, Any]:
    """Return ``params`` with each ``KEY=VALUE`` of ``settings`` set (dotted keys nest)."""
    result = _copy_tables(params)
    for setting in settings:
        key, sep, text = setting.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not sep or not all(parts):
            raise UsageError(f"--set {setting!r}: expected KEY=VALUE")
        table = result
        for depth, part in enumerate(parts[:-1]):
            inner = table.setdefault(part, {})
            if not isinstance(inner, dict):
                prefix = ".".join(parts[: depth + 1])
                raise UsageError(f"--set {'.'.join(parts)}: params.{prefix} is not a table")
            table = inner
        table[parts[-1]] = parse_value(text.strip())
    return result


def _copy_tables(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, dict) else v for k, v in data.items()}


def _resolve(args: argparse.Namespace) -> tuple[type[Scenario], dict[str, Any], int, str]:
    """Return the scenario, its parameter values, the seed and where the values came from."""
    target: str = args.target
    if target.endswith(".toml") or Path(target).is_file():
        loaded = load_scenario_file(Path(target))
        scenario, values, seed, source = loaded.scenario, loaded.params, loaded.seed, target
    else:
        scenario, values, seed, source = get_scenario(target), {}, None, ""
    if args.seed is not None:
        seed = args.seed
    overridden = bool(args.settings) or args.vehicles is not None
    values = apply_settings(values, args.settings)
    if args.vehicles is not None:
        if "vehicles" not in scenario.Params.model_fields:
            raise UsageError(f"scenario {scenario.name} has no vehicle count")
        values["vehicles"] = args.vehicles
    if overridden:
        source = f"{source} with the command line's values" if source else "command line"
    return scenario, values, 0 if seed is None else seed, source or "parameters"


def _report_directory(requested: Path | None, name: str, seed: int) -> Path:
    if requested is not None:
        # Wire scenarios keep a backend's data and ECUs' NVM there: a stale one would
        # take part in the new run.
        if requested.exists() and (not requested.is_dir() or any(requested.iterdir())):
            raise UsageError(f"{requested}: exists and is not an empty directory")
        return requested
    base = DEFAULT_REPORTS / f"{name}-{seed}"
    candidate, number = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{number}")
        number += 1
    return candidate


class _PlainStatus:
    """Progress as plain lines: changed text only, at most one line per interval."""

    def __init__(
        self, console: Console, prefix: str, interval_s: float = PLAIN_STATUS_INTERVAL_S
    ) -> None:
        self.console = console
        self.prefix = prefix
        self.interval_s = interval_s
        self._last_text = ""
        self._last_at = float("-inf")

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if text == self._last_text or now - self._last_at < self.interval_s:
            return
        self._last_text, self._last_at = text, now
        self.console.print(f"{self.prefix}{text}", markup=False)


@contextmanager
def _progress(
    console: Console, prefix: str, quiet: bool, interval_s: float = PLAIN_STATUS_INTERVAL_S
) -> Iterator[Callable[[str], None]]:
    """Yield a status sink: a live status line on a terminal, plain lines otherwise."""
    if quiet:
        yield lambda _text: None
    elif sys.stdout.isatty():
        with console.status(Text(f"{prefix}starting")) as status:
            yield lambda text: status.update(Text(f"{prefix}{text}"))
    else:
        yield _PlainStatus(console, prefix, interval_s)


def run_scenario(args: argparse.Namespace) -> int:
    """Run a scenario, write its report and print a summary; 0 only if it passed."""
    # matplotlib takes half a second to import: only the command that plots pays for it.
    from scenarios.report import summary_lines, write_report

    console = Console(highlight=False, soft_wrap=True)
    try:
        scenario, values, seed, source = _resolve(args)
        params = make_params(scenario, values, source=source)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from exc
    directory = _report_directory(args.report, scenario.name, seed)
    if not args.quiet:
        console.print(
            f"running {scenario.name} ({scenario.fidelity}, seed {seed}) in {directory}",
            markup=False,
        )
    with _progress(console, f"{scenario.name}: ", args.quiet) as on_status:
        run = execute(
            scenario,
            params,
            seed=seed,
            directory=directory,
            on_status=on_status,
            keep_log=not args.no_log,
        )
    files = write_report(run, directory)
    lines = summary_lines(run)
    console.print(Text(lines[0], style="bold green" if run.passed else "bold red"))
    for line in lines[1:]:
        failed = line.lstrip().startswith(("FAIL ", "error:"))
        console.print(Text(line, style="red" if failed else ""))
    console.print(f"  report: {files.html}", markup=False)
    console.print(f"  json:   {files.json}", markup=False)
    return 0 if run.passed else 1


# ---------------------------------------------------------------------- calibrate


def run_calibrate(args: argparse.Namespace) -> int:
    """Measure flashes of the simulated vehicle, write the bus model and compare."""
    console = Console(highlight=False, soft_wrap=True)
    sizes = sorted({kib * 1024 for kib in args.size_kib})
    if len(sizes) < 2:
        raise UsageError("--size-kib: give at least two different sizes")
    vehicle = vehicle_from(args)
    ecus = args.ecu or ["ecm"]
    for name in ecus:
        vehicle.ecu(name)
    # A handful of flashes of a second or more each: every one is worth a line.
    with _progress(console, "calibrate: ", False, interval_s=0.0) as on_status:
        try:
            result = calibrate(
                vehicle, sizes_bytes=sizes, ecus=ecus, rounds=args.rounds, on_status=on_status
            )
        except ScenarioError as exc:
            raise HilError(str(exc)) from exc
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.model.dump(), encoding="utf-8")
    _print_calibration(console, result)
    console.print(f"wrote {out}", markup=False)
    return 0


def _print_calibration(console: Console, result: Calibration) -> None:
    model = result.model
    figures = Table(title="measured figures")
    for column in ("figure", "value", "what"):
        figures.add_column(column, justify="right" if column == "value" else "left")
    for name, what in (
        ("frame_overhead_s", "host cost per CAN frame"),
        ("request_overhead_s", "host and ECU cost per UDS request"),
        ("fixed_s", "identify .. fingerprint, download set-up, checks, confirm"),
        ("erase_s", "erase routine"),
        ("boot_s", "reset, boot and verification"),
    ):
        figures.add_row(name, _seconds(float(getattr(model, name))), what)
    console.print(figures)
    bus = f"{model.bitrate_bps / 1000:g} kbit/s" + (" FD" if model.fd else "")
    comparison = Table(title="model against measured flashes (virtual bus: no wire time)")
    for column in ("ECU", "image", "measured", "model", "model/measured", f"model at {bus}"):
        comparison.add_column(column, justify="left" if column == "ECU" else "right")
    for row in result.comparisons():
        comparison.add_row(
            row.ecu,
            f"{row.image_bytes:,} B",
            f"{row.measured_s:.3f} s",
            f"{row.predicted_s:.3f} s",
            f"{row.ratio:.2f}",
            f"{row.bus_s:.3f} s",
        )
    console.print(comparison)


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    if value < 1.0:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"
