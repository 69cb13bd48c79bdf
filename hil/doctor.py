"""What this machine offers the harness: SocketCAN, python-can interfaces, serial ports, a bench.

Every check returns :class:`Check` lines (OK / MISSING / FAIL and why); nothing here
prints. Anything that can hang is bounded in time: python-can's interface detection
runs in a child process that is killed at its deadline, a bus is opened in a thread
that is given up at its deadline, the backend is asked with a gRPC deadline.

A bench is checked through what it needs (:class:`BenchNeeds`: a python-can bus, the
serial ports of its instruments), so that any bench description can be checked.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import itertools
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import can
import can.interfaces

if TYPE_CHECKING:
    from hil.bench.bench import Bench

Status = Literal["OK", "MISSING", "FAIL"]
OK: Status = "OK"
MISSING: Status = "MISSING"
FAIL: Status = "FAIL"

ARPHRD_CAN = 280
"""``/sys/class/net/*/type`` of a CAN network interface (vcan, vxcan, can)."""

DETECT_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 5.0
BACKEND_TIMEOUT_S = 2.0

DETECT_CHILD = ("-c", "from hil.doctor import _detect_main; _detect_main()")
"""How :func:`detect_interfaces` starts its child (``sys.executable`` + this + names)."""

_channels = itertools.count()
_NO_KERNEL_SUPPORT = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    section: str
    name: str
    status: Status
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the line as JSON-ready data."""
        return {
            "section": self.section,
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class BenchNeeds:
    """What a bench needs of this machine: one CAN bus and its instruments' serial ports.

    ``bus`` holds keyword arguments of :class:`can.Bus` (``interface``, ``channel``,
    ``bitrate``, ...); keys left out come from python-can's config files and ``CAN_*``
    environment variables, as python-can resolves them. ``serial_ports`` maps an
    instrument's name to its pyserial port or URL.
    """

    name: str
    bus: Mapping[str, Any]
    serial_ports: Mapping[str, str] = field(default_factory=dict)
    source: str = "built-in"

    def as_dict(self) -> dict[str, Any]:
        """Return the needs as JSON-ready data."""
        return {
            "name": self.name,
            "source": self.source,
            "bus": {key: _jsonable(value) for key, value in self.bus.items()},
            "serial_ports": dict(self.serial_ports),
        }


def sim_bench() -> BenchNeeds:
    """Return the simulated bench's needs: an in-process virtual bus, no serial port."""
    channel = f"hil-doctor-{os.getpid()}-{next(_channels)}"
    return BenchNeeds(
        name="sim",
        bus={"interface": "virtual", "channel": channel},
        source="built-in: simulated vehicle and instruments, in-process virtual bus",
    )


def bench_needs_from(bench: Bench) -> BenchNeeds:
    """Return what a bench resolved from the configuration (:mod:`hil.bench`) needs here.

    The ``sim`` bench when its process is not running needs what ``hil bench sim run``
    needs: an in-process virtual bus and loopback ports, always there.
    """
    if bench.simulated and bench.unavailable is not None:
        sim = sim_bench()
        return BenchNeeds(
            name=bench.name,
            bus=sim.bus,
            source=f"{bench.source}; not running now ('hil bench sim run' starts it: it needs "
            "only a virtual bus and loopback ports)",
        )
    ports: dict[str, str] = {}
    if bench.power is not None:
        ports["power"] = bench.power.port
    for name, board in bench.relays.boards.items():
        ports[f"relays {name}"] = board.port
    source = bench.source if not bench.simulated else f"{bench.source}, running"
    return BenchNeeds(name=bench.name, bus=bench.bus_kwargs(), serial_ports=ports, source=source)


def usable(checks: Sequence[Check]) -> bool:
    """Whether the bench was checked and every line of its section is OK."""
    bench = [c for c in checks if c.section == "bench"]
    return bool(bench) and all(c.status == OK for c in bench)


# ---------------------------------------------------------------------------- kernel


def check_kernel(sys_class_net: Path = Path("/sys/class/net")) -> list[Check]:
    """AF_CAN and a CAN_RAW socket, CAN network interfaces, the kernel's ISO-TP."""
    return [_check_af_can(), _check_can_interfaces(sys_class_net), _check_isotp()]


def _open_can_socket(kind: int, protocol_name: str) -> tuple[Status, str]:
    if not hasattr(socket, "AF_CAN"):
        return MISSING, "this Python has no socket.AF_CAN (SocketCAN is Linux only)"
    protocol = getattr(socket, protocol_name, None)
    if protocol is None:
        return MISSING, f"this Python has no socket.{protocol_name}"
    try:
        with socket.socket(socket.AF_CAN, kind, protocol):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in _NO_KERNEL_SUPPORT:
            return MISSING, f"the kernel refuses the socket: {reason}"
        return FAIL, f"cannot open the socket: {reason}"
    return OK, "socket opened"


def _check_af_can() -> Check:
    status, detail = _open_can_socket(socket.SOCK_RAW, "CAN_RAW")
    if status == OK:
        detail = "socket.AF_CAN present; a CAN_RAW socket opens"
    elif status == MISSING and hasattr(socket, "AF_CAN"):
        detail = f"no SocketCAN here ({detail}); try 'modprobe can can-raw'"
    return Check("kernel", "AF_CAN", status, detail, {"af_can": hasattr(socket, "AF_CAN")})


def can_network_interfaces(sys_class_net: Path = Path("/sys/class/net")) -> list[dict[str, Any]]:
    """List the CAN network interfaces in ``/sys/class/net``: name, virtual or not, up."""
    found: list[dict[str, Any]] = []
    try:
        entries = sorted(sys_class_net.iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            if int((entry / "type").read_text().strip()) != ARPHRD_CAN:
                continue
            flags = int((entry / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        virtual = "/devices/virtual/" in str(entry.resolve())
        found.append({"name": entry.name, "virtual": virtual, "up": bool(flags & 0x1)})
    return found


def _check_can_interfaces(sys_class_net: Path) -> Check:
    found = can_network_interfaces(sys_class_net)
    data = {"interfaces": found}
    if not found:
        return Check(
            "kernel",
            "CAN interfaces",
            MISSING,
            "no vcan or CAN network interface (ip link add dev vcan0 type vcan && "
            "ip link set up vcan0)",
            data,
        )
    text = ", ".join(
        f"{i['name']} ({'virtual' if i['virtual'] else 'adapter'}, {'up' if i['up'] else 'down'})"
        for i in found
    )
    status = OK if any(i["up"] for i in found) else FAIL
    detail = text if status == OK else f"{text}: none is up (ip link set up NAME)"
    return Check("kernel", "CAN interfaces", status, detail, data)


def _check_isotp() -> Check:
    status, detail = _open_can_socket(socket.SOCK_DGRAM, "CAN_ISOTP")
    if status == OK:
        detail = "the kernel's ISO-TP (CAN_ISOTP) socket opens (optional: can-isotp runs in Python)"
    else:
        detail = f"{detail} (optional: the harness runs ISO-TP in Python)"
        if status == MISSING and hasattr(socket, "CAN_ISOTP"):
            detail += "; try 'modprobe can-isotp'"
    return Check("kernel", "CAN_ISOTP", status, detail)


# ---------------------------------------------------------------------------- python-can


def detect_interfaces(
    names: Sequence[str] | None = None, timeout_s: float = DETECT_TIMEOUT_S
) -> dict[str, dict[str, Any]]:
    """Import each python-can interface and detect its channels, in a child process.

    Returns a result per interface name; an interface whose import or detection did
    not end within ``timeout_s`` (the child is killed then) has ``"timed_out": True``.
    """
    wanted = sorted(can.VALID_INTERFACES) if names is None else list(names)
    results: dict[str, dict[str, Any]] = {}
    if not wanted:
        return results
    process = subprocess.Popen(
        [sys.executable, *DETECT_CHILD, *wanted],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name="hil-doctor-detect", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < len(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            with contextlib.suppress(ValueError, KeyError, TypeError):
                result = json.loads(line)
                results[str(result["name"])] = result
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(1.0)
        if process.stdout is not None:
            process.stdout.close()
    for name in wanted:
        results.setdefault(name, {"name": name, "timed_out": True})
    return results


def _detect_one(name: str, notes: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "timed_out": False, "notes": notes}
    started = time.monotonic()
    try:
        module_name, class_name = can.interfaces.BACKENDS[name]
        bus_class = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # any import failure says the driver is not usable
        result.update(imported=False, error=f"{type(exc).__name__}: {exc}")
        return result
    result["imported"] = True
    try:
        configs = bus_class._detect_available_configs()
    except NotImplementedError:
        result["detection"] = "not implemented"
        configs = []
    except Exception as exc:  # a driver's own failure, reported as it is
        result["detection"] = f"failed: {type(exc).__name__}: {exc}"
        configs = []
    else:
        result["detection"] = "done"
    result["configs"] = [{k: _jsonable(v) for k, v in dict(c).items()} for c in configs]
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


def _detect_main() -> None:
    """Child process of :func:`detect_interfaces`: one JSON line per interface."""
    names = sys.argv[1:]
    notes: dict[int, list[str]] = {}
    write = threading.Lock()

    class _Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread is not None and record.thread in notes:
                notes[record.thread].append(f"{record.levelname}: {record.getMessage()}")

    root = logging.getLogger()
    root.addHandler(_Notes(level=logging.INFO))
    root.setLevel(logging.INFO)

    def work(name: str) -> None:
        mine: list[str] = []
        notes[threading.get_ident()] = mine
        try:
            result = _detect_one(name, mine)
        except BaseException as exc:  # report, never die silently
            result = {"name": name, "imported": False, "error": repr(exc), "notes": mine}
        with write:
            sys.stdout.write(json.dumps(result, default=str) + "\n")
            sys.stdout.flush()

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def check_python_can(
    timeout_s: float = DETECT_TIMEOUT_S,
    detect: Callable[..., dict[str, dict[str, Any]]] = detect_interfaces,
) -> list[Check]:
    """Check python-can: its version, then per interface whether it works and its channels."""
    checks = [
        Check(
            "python-can",
            "version",
            OK,
            f"version {can.__version__}; {len(can.VALID_INTERFACES)} interfaces known",
            {"version": can.__version__},
        )
    ]
    started = time.monotonic()
    results = detect(timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    for name, result in sorted(results.items()):
        status, detail = _interface_line(name, result, timeout_s)
        data = {
            "configs": result.get("configs", []),
            "timed_out": bool(result.get("timed_out")),
            "notes": result.get("notes", []),
        }
        checks.append(Check("python-can", name, status, detail, data))
    checks[0] = Check(
        "python-can",
        "version",
        OK,
        f"{checks[0].detail}; detection took {elapsed:.1f} s (limit {timeout_s:g} s)",
        {**checks[0].data, "detect_elapsed_s": round(elapsed, 3), "detect_timeout_s": timeout_s},
    )
    return checks


def _interface_line(name: str, result: Mapping[str, Any], timeout_s: float) -> tuple[Status, str]:
    if result.get("timed_out"):
        return FAIL, f"no answer from its import or detection within {timeout_s:g} s"
    if not result.get("imported"):
        return MISSING, f"not installed: {result.get('error', 'cannot import')}"
    # What the driver logged at warning level or above while loading: why it cannot work.
    warnings = [
        str(n).partition(": ")[2]
        for n in result.get("notes", [])
        if str(n).startswith(("WARNING: ", "ERROR: ", "CRITICAL: "))
    ]
    if name == "virtual":
        return OK, "in-process virtual bus; always available"
    if name == "remote":
        return OK, "python-can-remote: join a 'hil bus serve' hub (-i remote -c ws://HOST:PORT/)"
    if name == "udp_multicast":
        return OK, (
            "installed; multicast on the host network (the harness shares buses with "
            "'hil bus serve' on loopback instead)"
        )
    if name == "socketcan" and not _af_can_works():
        return MISSING, "installed, but this kernel has no SocketCAN (see AF_CAN)"
    configs = result.get("configs", [])
    if configs:
        channels = ", ".join(str(c.get("channel")) for c in configs)
        return OK, f"{len(configs)} channel(s): {channels}"
    detection = str(result.get("detection", ""))
    if detection.startswith("failed"):
        return FAIL, f"installed; detection {detection}"
    if warnings:
        return MISSING, f"no channel found; the driver says: {warnings[0]}"
    if detection == "not implemented":
        return OK, "installed; python-can cannot list its channels (give -c)"
    return OK, "installed; no channel found"


def _af_can_works() -> bool:
    return _open_can_socket(socket.SOCK_RAW, "CAN_RAW")[0] == OK


# ---------------------------------------------------------------------------- serial


def list_serial_ports() -> list[dict[str, str]]:
    """List the serial ports pyserial finds: device, description, hardware id."""
    # pyserial has no type information; its module is used as it is.
    list_ports = importlib.import_module("serial.tools.list_ports")
    return [
        {"device": p.device, "description": p.description or "", "hwid": p.hwid or ""}
        for p in sorted(list_ports.comports(), key=lambda p: p.device)
    ]


def check_serial_ports(ports: Sequence[Mapping[str, str]] | None = None) -> list[Check]:
    """One line per serial port found (instruments, slcan adapters)."""
    found = list_serial_ports() if ports is None else list(ports)
    if not found:
        return [Check("serial", "serial ports", MISSING, "no serial port found", {"ports": []})]
    checks = []
    for port in found:
        about = ", ".join(v for v in (port["description"], port["hwid"]) if v and v != "n/a")
        checks.append(Check("serial", port["device"], OK, about or "present", {"port": dict(port)}))
    return checks


# ---------------------------------------------------------------------------- bench


def check_bench(
    needs: BenchNeeds,
    *,
    open_timeout_s: float = OPEN_TIMEOUT_S,
    serial_ports: Sequence[Mapping[str, str]] | None = None,
) -> list[Check]:
    """Whether the bench can run here: its bus opens, its instruments' ports exist."""
    checks = [_check_bus(needs.bus, open_timeout_s)]
    known = {p["device"] for p in (list_serial_ports() if serial_ports is None else serial_ports)}
    for instrument, port in sorted(needs.serial_ports.items()):
        status, detail = _port_status(port, known)
        checks.append(
            Check("bench", f"serial {instrument}", status, f"{port}: {detail}", {"port": port})
        )
    ok = all(c.status == OK for c in checks)
    summary = Check(
        "bench",
        "bench",
        OK if ok else FAIL,
        f"{needs.name} ({needs.source}): {'usable' if ok else 'not usable'}",
        needs.as_dict(),
    )
    return [summary, *checks]


def _check_bus(config: Mapping[str, Any], timeout_s: float) -> Check:
    shown = {k: v for k, v in config.items() if k != "single_handle"}
    described = ", ".join(f"{k}={_jsonable(v)}" for k, v in shown.items()) or "python-can config"
    data = {"bus": {k: _jsonable(v) for k, v in config.items()}}
    outcome: queue.Queue[tuple[str, Any]] = queue.Queue()
    abandoned = threading.Event()

    def open_and_close() -> None:
        try:
            bus = can.Bus(**config)
        except Exception as exc:  # drivers raise anything; the line says what
            outcome.put(("error", exc))
            return
        try:
            outcome.put(("opened", str(bus.channel_info)))
        finally:
            bus.shutdown()
            if abandoned.is_set():
                logging.getLogger(__name__).debug("late bus %s shut down", described)

    thread = threading.Thread(target=open_and_close, name="hil-doctor-bus", daemon=True)
    thread.start()
    try:
        kind, value = outcome.get(timeout=timeout_s)
    except queue.Empty:
        abandoned.set()
        return Check("bench", "bus", FAIL, f"{described}: did not open within {timeout_s:g} s")
    thread.join(timeout_s)
    if kind == "opened":
        return Check("bench", "bus", OK, f"opened: {value}", data)
    exc = value
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, can.CanInterfaceNotImplementedError):
        return Check("bench", "bus", MISSING, f"{described}: {reason}", data)
    if isinstance(exc, OSError) and exc.errno in _NO_KERNEL_SUPPORT:
        return Check("bench", "bus", MISSING, f"{described}: {reason}", data)
    return Check("bench", "bus", FAIL, f"{described}: {type(exc).__name__}: {reason}", data)


def _port_status(port: str, known: set[str]) -> tuple[Status, str]:
    if "://" in port:
        scheme, _, rest = port.partition("://")
        if scheme == "loop":
            return OK, "pyserial loopback"
        if scheme in ("socket", "rfc2217"):
            host, _, port_text = rest.split("/", 1)[0].split("?", 1)[0].rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port_text)), timeout=1.0):
                    pass
            except (OSError, ValueError) as exc:
                return FAIL, f"cannot connect: {getattr(exc, 'strerror', None) or exc}"
            return OK, "reachable"
        return OK, f"pyserial URL ({scheme}://), not checked"
    if port in known or os.path.exists(port):
        return OK, "present"
    return MISSING, "no such serial port"


# ---------------------------------------------------------------------------- backend


def check_backend(
    address: str,
    *,
    timeout_s: float = BACKEND_TIMEOUT_S,
    credentials: Any = None,
) -> Check:
    """Ask the backend at ``HOST:PORT`` for its gRPC health, within ``timeout_s``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    data: dict[str, Any] = {"address": address, "tls": credentials is not None}
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        return Check("backend", "backend", FAIL, f"{address}: not HOST:PORT", data)
    started = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return Check("backend", "backend", FAIL, f"{address}: {reason}", data)
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        data["code"] = code.name if code is not None else None
        if code is grpc.StatusCode.UNIMPLEMENTED:
            text = "reachable, but it has no gRPC health service"
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            text = f"no gRPC answer within {timeout_s:g} s"
        else:
            text = f"gRPC health check failed ({data['code']}): {details}"
            if credentials is None:
                text += " (a TLS backend? give --tls-dir)"
        return Check("backend", "backend", FAIL, f"{address}: {text}", data)
    finally:
        channel.close()
    elapsed_ms = (time.monotonic() - started) * 1000
    serving = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    data.update(health=serving, elapsed_ms=round(elapsed_ms, 1))
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return Check("backend", "backend", FAIL, f"{address}: health {serving}", data)
    return Check(
        "backend", "backend", OK, f"{address}: {serving} (gRPC health, {elapsed_ms:.0f} ms)", data
    )


# ---------------------------------------------------------------------------- all of it


def run_checks(
    needs: BenchNeeds,
    *,
    backend: str | None,
    backend_credentials: Any = None,
    detect_timeout_s: float = DETECT_TIMEOUT_S,
    open_timeout_s: float = OPEN_TIMEOUT_S,
    backend_timeout_s: float = BACKEND_TIMEOUT_S,
) -> list[Check]:
    """Every check, in report order; the slow ones run side by side."""
    results: dict[str, list[Check]] = {}

    def run(key: str, work: Callable[[], list[Check]]) -> threading.Thread:
        def target() -> None:
            try:
                results[key] = work()
            except Exception as exc:  # a check that broke is a failed line, not a crash
                results[key] = [Check(key, key, FAIL, f"the check failed: {exc!r}")]

        thread = threading.Thread(target=target, name=f"hil-doctor-{key}", daemon=True)
        thread.start()
        return thread

    ports = list_serial_ports()
    threads = [
        run("python-can", lambda: check_python_can(detect_timeout_s)),
        run("bench", lambda: check_bench(needs, open_timeout_s=open_timeout_s, serial_ports=ports)),
    ]
    if backend is not None:
        threads.append(
            run(
                "backend",
                lambda: [
                    check_backend(
                        backend, timeout_s=backend_timeout_s, credentials=backend_credentials
                    )
                ],
            )
        )
    checks = [*check_kernel(), *check_serial_ports(ports)]
    for thread in threads:
        thread.join()
    for key in ("python-can", "bench", "backend"):
        checks.extend(results.get(key, []))
    order = ["bench", "kernel", "python-can", "serial", "backend"]
    return sorted(checks, key=lambda c: order.index(c.section))


def report(checks: Sequence[Check]) -> dict[str, Any]:
    """Return the JSON report: usable or not, the bench, every line."""
    bench = next((c for c in checks if c.section == "bench" and c.name == "bench"), None)
    return {
        "usable": usable(checks),
        "bench": dict(bench.data) if bench is not None else None,
        "checks": [c.as_dict() for c in checks],
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
