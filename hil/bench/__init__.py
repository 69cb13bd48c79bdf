"""Bench configuration (``hil.toml``) and the benches it describes.

A bench is a CAN bus, the ECUs on it, a power supply and relay lines (ignition).
:func:`resolve_bench` finds the one to use, by command line > environment >
``hil.toml`` > the built-in ``sim`` bench, and checks it; :meth:`Bench.connect`
opens its parts as they are needed::

    from hil.bench import resolve_bench

    bench = resolve_bench("lab")
    with bench.connect() as rig:
        rig.power.on()
        rig.ignition.on()
        version = rig.uds("bms").read_data_by_identifier(0xF189)

The ``sim`` bench is the simulated demo vehicle of ``hil bench sim run``
(:class:`hil.bench.sim.SimBench`), reached through the same drivers as a real
bench. :mod:`hil.bench.flashing` holds the checks before a flash. ``docs/bench.md``
documents the file.
"""

from hil.bench.bench import (
    ADDRESSING_MODES,
    IGNITION,
    Bench,
    BenchBusError,
    BenchConnection,
    BenchEcu,
    PowerControl,
    PowerReading,
    RelayLine,
    SeedKey,
)
from hil.bench.config import (
    BenchConfig,
    BenchEntry,
    ConfigFile,
    load_config_file,
    resolve_bench,
    sim_bench,
)
from hil.bench.errors import (
    BenchConfigError,
    BenchError,
    BenchFailure,
    BenchNotRunningError,
    BenchPartMissing,
    ConfigIssue,
    ConfirmationRequired,
    FlashDeclined,
    FlashSafetyError,
    SupplyVoltageError,
    UnknownBenchError,
)
from hil.bench.flashing import (
    FlashPlan,
    PlannedRequest,
    bench_flasher,
    check_flash_supply,
    flash_on_bench,
    flash_plan,
    prepare_flash,
)
from hil.bench.paths import ENV_BENCH, ENV_CONFIG, ENV_STATE_DIR, find_config_file
from hil.bench.schema import SIM_BENCH, BenchSpec, HilFileSpec

__all__ = [
    "ADDRESSING_MODES",
    "ENV_BENCH",
    "ENV_CONFIG",
    "ENV_STATE_DIR",
    "IGNITION",
    "SIM_BENCH",
    "Bench",
    "BenchBusError",
    "BenchConfig",
    "BenchConfigError",
    "BenchConnection",
    "BenchEcu",
    "BenchEntry",
    "BenchError",
    "BenchFailure",
    "BenchNotRunningError",
    "BenchPartMissing",
    "BenchSpec",
    "ConfigFile",
    "ConfigIssue",
    "ConfirmationRequired",
    "FlashDeclined",
    "FlashPlan",
    "FlashSafetyError",
    "HilFileSpec",
    "PlannedRequest",
    "PowerControl",
    "PowerReading",
    "RelayLine",
    "SeedKey",
    "SupplyVoltageError",
    "UnknownBenchError",
    "bench_flasher",
    "check_flash_supply",
    "find_config_file",
    "flash_on_bench",
    "flash_plan",
    "load_config_file",
    "prepare_flash",
    "resolve_bench",
    "sim_bench",
]
