"""Check-ins per second of the OTA backend over gRPC against a no-op gRPC service.

Registers a fleet of simulated vehicles with the bundled backend (SQLite in a
temporary directory unless --db names another database), then keeps
--vehicles check-ins in flight from --workers load-generator processes for
--seconds after a warm-up, the vehicles taking turns round-robin over the
fleet. It records every request's latency. In the same run the same load goes
to a no-op gRPC server: the same method, the same messages and the same
thread pool, with a handler that parses the request and answers at once, so
the ratio of the two is the cost of the backend's own work. Each server runs
in a process of its own, so the load generator never shares its interpreter
lock; only loopback (127.0.0.1) is used.

    python bench/backend_checkins.py [--vehicles 64] [--fleet 1000] [--seconds 10]
        [--workers 2] [--max-workers 32] [--rounds 1] [--db URL] [--json]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from backend_stub.api import device_pb2, device_pb2_grpc

HOST = "127.0.0.1"
SERVICE = "hil.ota.v1.DeviceService"
POLL_INTERVAL_S = 1800
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
# What a production server keeps answering with (Limits.checkin_interval_s).
NEXT_CHECKIN_S = 30
# The same server options as backend_stub.server.serve.
SERVER_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024), ("grpc.so_reuseport", 0)]
_spawn = multiprocessing.get_context("spawn")


def vin(n: int) -> str:
    """A valid VIN numbered ``n`` (no I, O or Q)."""
    return f"BNCHCK{n:011d}"


# ------------------------------------------------------------------- servers
def _backend_process(conn: Connection, data_dir: str, db_url: str | None, max_workers: int) -> None:
    """Child: serve the backend until the parent says stop (or goes away)."""
    logging.basicConfig(level=logging.WARNING)
    # The server announces the release key it creates in the empty data directory.
    logging.getLogger("backend_stub.server").setLevel(logging.ERROR)
    from backend_stub.server import BackendConfig, serve

    try:
        running = serve(
            BackendConfig(
                data_dir=Path(data_dir),
                listen=f"{HOST}:0",
                db_url=db_url,
                insecure=True,
                max_workers=max_workers,
            )
        )
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", running.port))
        with contextlib.suppress(EOFError):
            conn.recv()
    finally:
        running.stop(0)


def _noop_check_in(
    request: device_pb2.CheckInRequest, context: grpc.ServicerContext
) -> device_pb2.CheckInResponse:
    return device_pb2.CheckInResponse(next_checkin_s=NEXT_CHECKIN_S)


def _noop_process(conn: Connection, max_workers: int) -> None:
    """Child: a gRPC server whose CheckIn parses the request and answers, nothing else."""
    from concurrent import futures

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=SERVER_OPTIONS,
    )
    handler = grpc.unary_unary_rpc_method_handler(
        _noop_check_in,
        request_deserializer=device_pb2.CheckInRequest.FromString,
        response_serializer=device_pb2.CheckInResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"CheckIn": handler}),)
    )
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        conn.send(("ready", port))
        with contextlib.suppress(EOFError):
            conn.recv()
    finally:
        server.stop(0).wait()


@contextlib.contextmanager
def server_process(target: Callable[..., None], *args: Any) -> Iterator[tuple[int, int]]:
    """Run ``target`` in a spawned process; yield its (port, pid) and stop it on exit."""
    parent, child = _spawn.Pipe()
    process = _spawn.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(START_TIMEOUT_S):
            raise SystemExit(f"error: the server process did not start in {START_TIMEOUT_S:.0f} s")
        try:
            kind, value = parent.recv()
        except EOFError:
            process.join(5)
            raise SystemExit(
                f"error: the server process exited (code {process.exitcode}) before it was ready"
            ) from None
        if kind != "ready":
            raise SystemExit(f"error: the server did not start: {value}")
        assert process.pid is not None
        yield value, process.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ load generator
@dataclass
class WorkerResult:
    """What one load-generator process saw inside the measured window."""

    latencies_s: array.array[float]
    errors: int
    first_error: str
    cpu_s: float


async def _drive(
    port: int,
    vins: Sequence[str],
    in_flight: int,
    conn: Connection,
) -> WorkerResult:
    requests = [device_pb2.CheckInRequest(vin=v) for v in vins]
    latencies: array.array[float] = array.array("d")
    errors = 0
    first_error = ""
    cpu = [0.0, 0.0]
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_S)
        check_in = device_pb2_grpc.DeviceServiceStub(channel).CheckIn
        conn.send("ready")
        start, measure_from, measure_until = await asyncio.to_thread(conn.recv)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        turn = 0

        async def vehicle() -> None:
            nonlocal turn, errors, first_error
            while True:
                request = requests[turn % len(requests)]
                turn += 1
                sent = time.monotonic()
                if sent >= measure_until:
                    return
                try:
                    await check_in(request, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError as exc:
                    errors += 1
                    first_error = first_error or f"{exc.code().name}: {exc.details()}"
                    if errors > 100:
                        return
                    continue
                done = time.monotonic()
                if measure_from <= done < measure_until:
                    latencies.append(done - sent)

        async def clock() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            cpu[0] = time.process_time()
            await asyncio.sleep(max(0.0, measure_until - time.monotonic()))
            cpu[1] = time.process_time()

        await asyncio.gather(clock(), *(vehicle() for _ in range(in_flight)))
    return WorkerResult(latencies, errors, first_error, cpu[1] - cpu[0])


def _worker_process(conn: Connection, port: int, vins: list[str], in_flight: int) -> None:
    """Child: keep ``in_flight`` check-ins going and send back the measurements."""
    try:
        result = asyncio.run(_drive(port, vins, in_flight, conn))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("done", result))
    finally:
        conn.close()


@dataclass
class Measurement:
    """Requests completed inside the window, their latencies, and CPU spent."""

    seconds: float
    latencies_s: list[float]
    errors: int
    first_error: str
    server_cpu_s: float | None
    client_cpu_s: float

    rates: tuple[float, ...] = ()

    @classmethod
    def combined(cls, rounds: list[Measurement]) -> Measurement:
        """All rounds in one: the median rate, the latencies and CPU of every round."""
        server = [m.server_cpu_s for m in rounds]
        return cls(
            seconds=sum(m.seconds for m in rounds),
            latencies_s=sorted(x for m in rounds for x in m.latencies_s),
            errors=sum(m.errors for m in rounds),
            first_error=next((m.first_error for m in rounds if m.first_error), ""),
            server_cpu_s=None if None in server else sum(s for s in server if s is not None),
            client_cpu_s=sum(m.client_cpu_s for m in rounds),
            rates=tuple(m.rate for m in rounds),
        )

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        """Completed requests per second (the median over rounds)."""
        if self.rates:
            return statistics.median(self.rates)
        return self.requests / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        rank = max(1, round(fraction * len(self.latencies_s)))
        return self.latencies_s[rank - 1] * 1000

    def cpu_us(self, seconds: float | None) -> float | None:
        """CPU seconds per completed request, in microseconds."""
        if seconds is None or not self.requests:
            return None
        return seconds / self.requests * 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "rate_per_s": round(self.rate, 1),
            "rate_per_s_of_rounds": [round(r, 1) for r in self.rates],
            "p50_ms": round(self.percentile_ms(0.50), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
            "errors": self.errors,
            "server_cpu_us_per_request": _rounded(self.cpu_us(self.server_cpu_s)),
            "client_cpu_us_per_request": _rounded(self.cpu_us(self.client_cpu_s)),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def measure(port: int, server_pid: int, fleet: list[str], args: argparse.Namespace) -> Measurement:
    """Drive the server on ``port`` from ``args.workers`` processes; measure the window."""
    workers = min(args.workers, args.vehicles)
    processes, pipes = [], []
    try:
        for index in range(workers):
            share = args.vehicles // workers + (1 if index < args.vehicles % workers else 0)
            parent, child = _spawn.Pipe()
            process = _spawn.Process(
                target=_worker_process,
                args=(child, port, fleet[index::workers], share),
                daemon=True,
            )
            process.start()
            child.close()
            processes.append(process)
            pipes.append(parent)
        for pipe in pipes:
            if not pipe.poll(START_TIMEOUT_S):
                raise SystemExit("error: a load-generator process did not start")
            message = pipe.recv()
            if message != "ready":
                raise SystemExit(f"error: a load-generator process failed: {message[1]}")
        start = time.monotonic() + 0.1
        measure_from = start + args.warmup
        measure_until = measure_from + args.seconds
        for pipe in pipes:
            pipe.send((start, measure_from, measure_until))
        time.sleep(max(0.0, measure_from - time.monotonic()))
        cpu_before = cpu_seconds(server_pid)
        time.sleep(max(0.0, measure_until - time.monotonic()))
        cpu_after = cpu_seconds(server_pid)
        results: list[WorkerResult] = []
        for pipe in pipes:
            if not pipe.poll(CALL_TIMEOUT_S + 10):
                raise SystemExit("error: a load-generator process did not finish")
            kind, value = pipe.recv()
            if kind != "done":
                raise SystemExit(f"error: a load-generator process failed: {value}")
            results.append(value)
    finally:
        for pipe in pipes:
            pipe.close()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join()
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = cpu_after - cpu_before
    return Measurement(
        seconds=args.seconds,
        latencies_s=sorted(x for r in results for x in r.latencies_s),
        errors=sum(r.errors for r in results),
        first_error=next((r.first_error for r in results if r.first_error), ""),
        server_cpu_s=server_cpu,
        client_cpu_s=sum(r.cpu_s for r in results),
    )


def register_fleet(port: int, fleet: list[str], in_flight: int) -> float:
    """Register every vehicle of ``fleet`` with the demo vehicle's ECUs; return seconds taken."""
    from backend_stub.api import common_pb2
    from ecu_sim import demo_vehicle

    ecus = [
        common_pb2.EcuInfo(name=e.name, hardware_id=e.hardware_id, software_version="1.0.0")
        for e in demo_vehicle().ecus
    ]

    async def run() -> None:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            stub = device_pb2_grpc.DeviceServiceStub(channel)
            pending = iter(fleet)

            async def register() -> None:
                for number in pending:
                    await stub.RegisterVehicle(
                        device_pb2.RegisterVehicleRequest(vin=number, model="demo", ecus=ecus),
                        timeout=CALL_TIMEOUT_S,
                    )

            await asyncio.gather(*(register() for _ in range(in_flight)))

    started = time.monotonic()
    try:
        asyncio.run(run())
    except grpc.RpcError as exc:
        raise SystemExit(
            f"error: registering the fleet failed: {exc.code().name}: {exc.details()}"
        ) from exc
    return time.monotonic() - started


# ---------------------------------------------------------------------- main
def _line(label: str, m: Measurement, extra: str = "") -> str:
    server = m.cpu_us(m.server_cpu_s)
    client = m.cpu_us(m.client_cpu_s)
    cpu = f"  CPU/req server {server:,.0f} us" if server is not None else ""
    cpu += f" client {client:,.0f} us" if client is not None else ""
    return (
        f"{label:<17}: {m.rate:>6,.0f} req/s  p50 {m.percentile_ms(0.5):5.1f} ms  "
        f"p99 {m.percentile_ms(0.99):5.1f} ms{extra}{cpu}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL, e.g. postgresql+psycopg://user@127.0.0.1/db "
        "(default: SQLite in a temporary directory)",
    )
    parser.add_argument(
        "--vehicles", type=int, default=64, help="check-ins kept in flight (default 64)"
    )
    parser.add_argument(
        "--fleet", type=int, default=1000, help="registered vehicles (default 1000)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up time (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="load-generator processes (default 2)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=32,
        help="thread pool of both servers, BackendConfig.max_workers (default 32)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate no-op and backend measurements this many times; "
        "report the median rate and the latencies of all rounds (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for name in ("vehicles", "fleet", "workers", "max_workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")

    fleet = [vin(n) for n in range(args.fleet)]
    data_dir = tempfile.mkdtemp(prefix="bench-checkins-")
    noops: list[Measurement] = []
    backends: list[Measurement] = []
    try:
        # Both servers stay up for all rounds; the idle one costs nothing.
        with (
            server_process(_noop_process, args.max_workers) as noop_server,
            server_process(_backend_process, data_dir, args.db, args.max_workers) as backend_server,
        ):
            registration_s = register_fleet(backend_server[0], fleet, min(args.vehicles, 32))
            for _ in range(args.rounds):
                noops.append(measure(*noop_server, fleet, args))
                backends.append(measure(*backend_server, fleet, args))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    noop = Measurement.combined(noops)
    backend = Measurement.combined(backends)

    ratio = backend.rate / noop.rate if noop.rate else 0.0
    failed = noop.errors or backend.errors
    database = "sqlite (temporary file)" if args.db is None else _redacted(args.db)
    if args.json:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "grpcio": grpc.__version__,
                    "cpus": os.cpu_count(),
                    "database": database,
                    "vehicles_in_flight": args.vehicles,
                    "fleet": args.fleet,
                    "workers": min(args.workers, args.vehicles),
                    "max_workers": args.max_workers,
                    "warmup_s": args.warmup,
                    "registration_s": round(registration_s, 3),
                    "noop": noop.summary(),
                    "backend": backend.summary(),
                    "ratio": round(ratio, 3),
                    "supported_vehicles_at_30_min": round(backend.rate * POLL_INTERVAL_S),
                },
                indent=2,
            )
        )
    else:
        print(
            f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
            f"{os.cpu_count()} CPUs; database {database}"
        )
        print(
            f"{args.vehicles} check-ins in flight from {min(args.workers, args.vehicles)} "
            f"load-generator processes (grpc.aio), fleet of {args.fleet} vehicles "
            f"(registered in {registration_s:.1f} s); server thread pool {args.max_workers}; "
            f"{args.seconds:g} s measured after {args.warmup:g} s warm-up"
        )
        print()
        print(_line("no-op gRPC", noop))
        print(_line("backend check-in", backend, f"  ({ratio:.0%} of no-op)"))
        if args.rounds > 1:
            for label, m in (("no-op", noop), ("backend", backend)):
                print(f"  {label} rounds: " + ", ".join(f"{r:,.0f}" for r in m.rates) + " req/s")
        print()
        print(
            f"at one check-in per {POLL_INTERVAL_S // 60} minutes this rate serves about "
            f"{backend.rate * POLL_INTERVAL_S:,.0f} vehicles"
        )
    if failed:
        for label, m in (("no-op", noop), ("backend", backend)):
            if m.errors:
                print(
                    f"error: {m.errors} {label} requests failed: {m.first_error}", file=sys.stderr
                )
        return 1
    return 0


def _redacted(url: str) -> str:
    """The URL without its password."""
    try:
        import sqlalchemy

        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(given with --db)"


if __name__ == "__main__":
    sys.exit(main())
