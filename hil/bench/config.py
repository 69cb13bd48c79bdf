"""Bench configuration resolved in one place: command line > environment > ``hil.toml`` > defaults.

- The file: ``--hil-config FILE`` > ``$HIL_CONFIG`` > ``./hil.toml`` > ``hil.toml``
  in the user's configuration directory > none (:func:`hil.bench.paths.find_config_file`).
- The bench: ``--bench NAME`` > ``$HIL_BENCH`` > the file's ``default_bench`` > ``sim``.
- ``sim`` is built in (the simulated demo vehicle of ``hil bench sim run``) and
  always exists; a file may not define a bench of that name.

A file is validated as a whole when it is read (types, unknown keys, instrument
kinds, cross references); what needs the outside world is checked when one bench
is resolved: its vehicle file, secrets from the environment, seed/key plugins,
instrument driver options. Every error names the file, the line and the key::

    hil.toml:14: benches.lab.ecus.bms.request_id: Input should be a valid integer
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ecu_sim import demo_vehicle_path
from hil.bench.bench import Bench, BenchEcu, Locator, SeedKey, algorithm_parameters
from hil.bench.errors import BenchConfigError, ConfigIssue, UnknownBenchError
from hil.bench.paths import ENV_BENCH, ConfigLocation, find_config_file
from hil.bench.schema import (
    NAME_PATTERN,
    SIM_BENCH,
    BenchEcuSpec,
    BenchSpec,
    HilFileSpec,
    SecuritySpec,
    UdsClientSpec,
)
from hil.bench.simstate import SimBenchState, sim_bench_spec, state_file
from hil.bench.tomlpos import TomlPath, TomlPositions
from hil.instruments import (
    DriverUnavailableError,
    PowerSupply,
    RelayBoard,
    UnknownInstrumentError,
    load_driver,
)
from ota_formats.errors import VehicleFileError
from ota_formats.signing import dev_public_key, public_key_bytes
from ota_formats.vehicle import (
    EcuSpec,
    IsoTpSpec,
    SigningSpec,
    VehicleSpec,
    is_valid_ecu_name,
    load_vehicle,
)

_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_ELEVEN_BIT_MAX = 0x7FF
_OBD_FUNCTIONAL_ID = 0x7DF


def dotted(path: Sequence[str | int]) -> str:
    """Return a key path as people write it: ``benches.lab.ecus[0].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            text += f".{shown}" if text else shown
    return text


# ---------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class ConfigFile:
    """A read and validated ``hil.toml``."""

    location: ConfigLocation
    spec: HilFileSpec
    data: Mapping[str, Any]
    positions: TomlPositions

    @property
    def name(self) -> str:
        """How messages name the file."""
        return self.location.display

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file start from."""
        return self.location.path.parent

    def issue(self, path: TomlPath, message: str) -> ConfigIssue:
        """Return an issue at ``path``, on the line of the key or of its nearest table."""
        return ConfigIssue(self.name, self.positions.line_of(path), dotted(path), message)

    def where(self, path: TomlPath) -> str:
        """Return ``file:line`` of ``path``."""
        line = self.positions.line_of(path)
        return f"{self.name}:{line}" if line is not None else self.name


def _data_path(loc: Sequence[str | int], data: Any) -> TomlPath:
    """Return the part of a pydantic error location that names keys of the data.

    Pydantic adds the members of a union to locations (``str``, ``int``...); they are
    not keys. A key that is missing from the data ends the path.
    """
    path: list[str | int] = []
    node: Any = data
    for item in loc:
        if isinstance(node, Mapping):
            path.append(item)
            if item not in node:
                break
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            path.append(item)
            node = node[item]
        else:
            break
    return tuple(path)


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _known_keys(path: TomlPath) -> list[str] | None:
    """Return the keys the schema allows in the table that holds ``path``'s last key."""
    node: Any = HilFileSpec
    for item in path[:-1]:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            info = node.model_fields.get(str(item))
            if info is None:
                return None
            node = info.annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return None
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def _message(error: Mapping[str, Any], path: TomlPath) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        known = _known_keys(path)
        return "unknown key" + (f" (known keys: {', '.join(known)})" if known else "")
    if kind == "missing":
        return "missing required key"
    return str(error["msg"]).removeprefix("Value error, ")


def _validation_issues(exc: ValidationError, file: ConfigFile) -> list[ConfigIssue]:
    issues = []
    for error in exc.errors():
        path = _data_path(error["loc"], file.data)
        issues.append(file.issue(path, _message(error, path)))
    return issues


def _static_issues(file: ConfigFile) -> list[ConfigIssue]:
    """Names and cross references, for every bench of the file."""
    issues: list[ConfigIssue] = []
    spec = file.spec
    for name, bench in spec.benches.items():
        where: TomlPath = ("benches", name)
        if name == SIM_BENCH:
            issues.append(
                file.issue(
                    where,
                    "'sim' is the built-in simulated bench and cannot be redefined; "
                    "give this bench another name",
                )
            )
        elif not NAME_PATTERN.match(name):
            issues.append(
                file.issue(where, "a bench name is a letter then letters, digits, '_' or '-'")
            )
        for ecu in bench.ecus:
            if not is_valid_ecu_name(ecu):
                issues.append(
                    file.issue(
                        (*where, "ecus", ecu),
                        "an ECU name is lower-case letters, digits, '-' or '_', at most 16",
                    )
                )
        for board in bench.relays.boards:
            if not NAME_PATTERN.match(board):
                issues.append(
                    file.issue((*where, "relays", "boards", board), "not a valid board name")
                )
        for line_name, line in bench.relays.lines.items():
            if not NAME_PATTERN.match(line_name):
                issues.append(
                    file.issue((*where, "relays", "lines", line_name), "not a valid line name")
                )
            if line.board not in bench.relays.boards:
                known = ", ".join(bench.relays.boards) or "none"
                issues.append(
                    file.issue(
                        (*where, "relays", "lines", line_name, "board"),
                        f"no relay board {line.board!r} in this bench (boards: {known})",
                    )
                )
    default = spec.default_bench
    if default is not None and default != SIM_BENCH and default not in spec.benches:
        known = ", ".join([SIM_BENCH, *spec.benches])
        issues.append(file.issue(("default_bench",), f"no bench {default!r} (benches: {known})"))
    return issues


def load_config_file(location: ConfigLocation) -> ConfigFile:
    """Read, parse and validate a configuration file.

    Raises:
        BenchConfigError: the file is missing, not TOML, or not a valid configuration.
    """
    name = location.display
    try:
        text = location.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchConfigError(
            ConfigIssue(name, None, "", f"no such configuration file (from {location.origin})")
        ) from None
    except OSError as exc:
        raise BenchConfigError(
            ConfigIssue(name, None, "", f"cannot read: {exc.strerror or exc}")
        ) from exc
    except UnicodeDecodeError as exc:
        raise BenchConfigError(ConfigIssue(name, None, "", "not UTF-8 text")) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.search(str(exc))
        line = int(match.group(1)) if match else None
        raise BenchConfigError(ConfigIssue(name, line, "", f"invalid TOML: {exc}")) from exc
    positions = TomlPositions(text)
    try:
        spec = HilFileSpec.model_validate(data)
    except ValidationError as exc:
        partial = ConfigFile(location, HilFileSpec(), data, positions)
        raise BenchConfigError(_validation_issues(exc, partial)) from exc
    file = ConfigFile(location, spec, data, positions)
    issues = _static_issues(file)
    if issues:
        raise BenchConfigError(issues)
    return file


# ---------------------------------------------------------------------------- resolution


def _seed_key(
    security: SecuritySpec,
    path: TomlPath,
    env: Mapping[str, str],
    locate: Locator,
    issues: list[ConfigIssue],
    shown_file: str,
) -> SeedKey | None:
    if security.plugin is not None:
        return _plugin(security, (*path, "plugin"), locate, issues)
    assert security.secret is not None
    where = (*path, "secret")
    variable = security.env_var
    if variable is None:
        return SeedKey.hmac(
            bytes.fromhex(security.secret.replace(" ", "")),
            f"HMAC-SHA256, secret inline in {shown_file}",
        )
    value = env.get(variable)
    if value is None:
        issues.append(locate(where, f"environment variable {variable} is not set"))
        return None
    try:
        secret = bytes.fromhex(value.replace(" ", ""))
    except ValueError:
        secret = b""
    if not secret:
        issues.append(locate(where, f"environment variable {variable} is not a hexadecimal key"))
        return None
    return SeedKey.hmac(secret, f"HMAC-SHA256, secret from env:{variable}")


def _plugin(
    security: SecuritySpec, where: TomlPath, locate: Locator, issues: list[ConfigIssue]
) -> SeedKey | None:
    assert security.plugin is not None
    module_name, _, attribute = security.plugin.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: report whatever it raises
        issues.append(locate(where, f"cannot import seed/key plugin module {module_name!r}: {exc}"))
        return None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            issues.append(locate(where, f"module {module_name!r} has no {attribute!r}"))
            return None
    if not callable(target):
        issues.append(locate(where, f"{security.plugin} is not callable"))
        return None
    names = algorithm_parameters(target)
    if names is not None and "seed" not in names:
        issues.append(
            locate(
                where,
                f"{security.plugin} takes no parameter named 'seed' (udsoncan passes "
                "level, seed and params by name)",
            )
        )
        return None
    return SeedKey(target, dict(security.params), f"plugin {security.plugin}")


def _flash_vehicle(
    name: str,
    base: EcuSpec | None,
    vehicle: VehicleSpec | None,
    ids: tuple[int, int, int],
    isotp_spec: IsoTpSpec,
    fd: bool,
    anchors: tuple[str, ...] | None,
) -> VehicleSpec:
    """Return a one-ECU vehicle description for the gateway's DiagChannel and flasher."""
    request_id, response_id, functional_id = ids
    if base is not None:
        ecu: dict[str, Any] = base.model_dump()
    else:
        # Not read by the tester: identity comes from the ECU, keys from the bench's seed/key.
        ecu = {
            "hardware_id": "unknown",
            "part_number": "unknown",
            "serial_number": "unknown",
            "security_secret": bytes(16),
        }
    ecu.update(
        name=name, request_id=request_id, response_id=response_id, isotp=isotp_spec.model_dump()
    )
    data: dict[str, Any] = {
        "name": vehicle.name if vehicle else name,
        "vin": vehicle.vin if vehicle else "0" * 17,
        "can": vehicle.can.model_dump() if vehicle else {"fd": fd},
        "functional_request_id": functional_id,
        # Replaced below: the keys a bench trusts are its own, or none.
        "signing": {"trust_anchors": [public_key_bytes(dev_public_key()).hex()]},
        "ecu": [ecu],
    }
    spec = VehicleSpec.model_validate(data)
    return spec.model_copy(
        update={"signing": SigningSpec.model_construct(trust_anchors=tuple(anchors or ()))}
    )


def _resolve_ecu(
    name: str,
    given: BenchEcuSpec,
    base: EcuSpec | None,
    vehicle: VehicleSpec | None,
    bench: BenchSpec,
    path: TomlPath,
    env: Mapping[str, str],
    locate: Locator,
    issues: list[ConfigIssue],
    anchors: tuple[str, ...] | None,
    shown_file: str,
) -> BenchEcu | None:
    before = len(issues)
    addressing = given.addressing or "normal_11bits"
    eleven = addressing.endswith("11bits")
    request_id = given.request_id
    if request_id is None and base is not None:
        request_id = base.request_id
    response_id = given.response_id
    if response_id is None and base is not None:
        response_id = base.response_id
    functional_id = given.functional_id
    if functional_id is None:
        if base is not None and vehicle is not None:
            functional_id = vehicle.functional_request_id
        elif addressing == "normal_11bits":
            functional_id = _OBD_FUNCTIONAL_ID
    needs: list[str] = []
    if addressing != "normal_fixed_29bits":
        needs += ["request_id", "response_id"]
    if addressing.startswith("extended") or addressing == "normal_fixed_29bits":
        needs += ["target_address", "source_address"]
    if addressing.startswith("mixed"):
        needs.append("address_extension")
    values = {
        "request_id": request_id,
        "response_id": response_id,
        "target_address": given.target_address,
        "source_address": given.source_address,
        "address_extension": given.address_extension,
    }
    for key in needs:
        if values[key] is None:
            why = "" if base is None and vehicle is None else " (not in the vehicle file either)"
            issues.append(locate((*path, key), f"missing: {addressing} addressing needs it{why}"))
    if eleven:
        for key, value in (
            ("request_id", request_id),
            ("response_id", response_id),
            ("functional_id", functional_id),
        ):
            if value is not None and value > _ELEVEN_BIT_MAX:
                issues.append(
                    locate((*path, key), f"0x{value:X} is not an 11-bit CAN id ({addressing})")
                )
    if request_id is not None and request_id == response_id:
        issues.append(locate((*path, "response_id"), "request_id and response_id must differ"))

    isotp_spec = base.isotp if base is not None else IsoTpSpec()
    if given.isotp is not None:
        changes = {key: getattr(given.isotp, key) for key in given.isotp.model_fields_set}
        isotp_spec = isotp_spec.model_copy(update=changes)
    fd = vehicle.can.fd if vehicle is not None else bool(bench.bus.fd)
    if not fd and isotp_spec.tx_data_length not in (None, 8):
        issues.append(
            locate(
                (*path, "isotp", "tx_data_length"),
                "more than 8 bytes per frame needs CAN FD (the vehicle's can.fd or the bus's fd)",
            )
        )

    uds = given.uds or UdsClientSpec()
    if uds.p2_star_timeout_s is None:
        p2_star = base.timing.p2_star_ms / 1000 + 1.0 if base is not None else 6.0
        uds = uds.model_copy(update={"p2_star_timeout_s": p2_star})

    seed_key: SeedKey | None = None
    if given.security is not None:
        seed_key = _seed_key(given.security, (*path, "security"), env, locate, issues, shown_file)
    elif base is not None and vehicle is not None:
        source = vehicle.source.name if vehicle.source else "the vehicle file"
        seed_key = SeedKey.hmac(base.security_secret, f"HMAC-SHA256, secret from {source}")

    if len(issues) > before:
        return None
    flash_vehicle = None
    if addressing == "normal_11bits":
        assert request_id is not None and response_id is not None and functional_id is not None
        try:
            flash_vehicle = _flash_vehicle(
                name,
                base,
                vehicle,
                (request_id, response_id, functional_id),
                isotp_spec,
                fd,
                anchors,
            )
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            issues.append(locate(path, message))
            return None
    return BenchEcu(
        name=name,
        addressing=addressing,
        request_id=request_id,
        response_id=response_id,
        functional_id=functional_id,
        target_address=given.target_address,
        source_address=given.source_address,
        address_extension=given.address_extension,
        isotp=isotp_spec,
        uds=uds,
        seed_key=seed_key,
        fd=fd,
        flash_vehicle=flash_vehicle,
    )


def _check_instrument(
    kind: str,
    options: Mapping[str, Any],
    path: TomlPath,
    expected: type[PowerSupply] | type[RelayBoard],
    locate: Locator,
    issues: list[ConfigIssue],
) -> None:
    try:
        driver = load_driver(kind)
    except (UnknownInstrumentError, DriverUnavailableError) as exc:
        issues.append(locate((*path, "kind"), str(exc)))
        return
    if not issubclass(driver, expected):
        what = "power supply" if expected is PowerSupply else "relay board"
        issues.append(locate((*path, "kind"), f"{kind!r} is not a {what} ({driver.__name__})"))
        return
    takes = driver.option_names()
    for option in options:
        if option not in takes:
            issues.append(
                locate(
                    (*path, "options", option),
                    f"unknown option for the {kind!r} instrument (it takes: "
                    f"{', '.join(takes) or 'none'})",
                )
            )


def resolve_spec(
    name: str,
    spec: BenchSpec,
    *,
    source: str,
    env: Mapping[str, str],
    base_dir: Path | None = None,
    path: TomlPath = (),
    locate: Locator | None = None,
    shown_file: str = "the configuration",
    simulated: bool = False,
    unavailable: str | None = None,
) -> Bench:
    """Resolve one validated bench description into a :class:`Bench`.

    Raises:
        BenchConfigError: every problem found, each with its file, line and key.
    """

    def default_locate(where: TomlPath, message: str) -> ConfigIssue:
        return ConfigIssue(None, None, dotted(where), message)

    locate = locate or default_locate
    issues: list[ConfigIssue] = []
    vehicle: VehicleSpec | None = None
    if spec.vehicle is not None:
        file = demo_vehicle_path() if spec.vehicle == "demo" else Path(spec.vehicle)
        if base_dir is not None and not file.is_absolute():
            file = base_dir / file
        try:
            vehicle = load_vehicle(file)
        except VehicleFileError as exc:
            issues.append(locate((*path, "vehicle"), str(exc)))

    anchors = spec.trust_anchors
    if anchors is None and vehicle is not None:
        anchors = vehicle.signing.trust_anchors
    names = [ecu.name for ecu in vehicle.ecus] if vehicle is not None else []
    names += [ecu for ecu in spec.ecus if ecu not in names]
    ecus: dict[str, BenchEcu] = {}
    for ecu_name in names:
        base = None
        if vehicle is not None and any(e.name == ecu_name for e in vehicle.ecus):
            base = vehicle.ecu(ecu_name)
        resolved = _resolve_ecu(
            ecu_name,
            spec.ecus.get(ecu_name) or BenchEcuSpec(),
            base,
            vehicle,
            spec,
            (*path, "ecus", ecu_name),
            env,
            locate,
            issues,
            anchors,
            shown_file,
        )
        if resolved is not None:
            ecus[ecu_name] = resolved

    if spec.power is not None and unavailable is None:
        _check_instrument(
            spec.power.kind, spec.power.options, (*path, "power"), PowerSupply, locate, issues
        )
    for board_name, board in spec.relays.boards.items():
        if unavailable is None:
            where = (*path, "relays", "boards", board_name)
            _check_instrument(board.kind, board.options, where, RelayBoard, locate, issues)
    if issues:
        raise BenchConfigError(issues)
    return Bench(
        name=name,
        source=source,
        description=spec.description,
        simulated=simulated,
        bus=spec.bus,
        ecus=ecus,
        vehicle=vehicle,
        trust_anchors=anchors,
        power=spec.power,
        relays=spec.relays,
        base_dir=base_dir,
        unavailable=unavailable,
        path=path,
        locate=locate,
    )


def sim_bench(env: Mapping[str, str] | None = None) -> Bench:
    """Return the built-in ``sim`` bench, as the running ``hil bench sim run`` describes it."""
    env = os.environ if env is None else env
    where = state_file(env)
    state = SimBenchState.read(where)
    unavailable = None
    if state is None:
        unavailable = (
            f"the sim bench is not running (no live {where}); start it with 'hil bench sim run' "
            f"(with the same HIL_STATE_DIR)"
        )
    return resolve_spec(
        SIM_BENCH,
        sim_bench_spec(state),
        source="built-in",
        env=env,
        shown_file=str(where),
        simulated=True,
        unavailable=unavailable,
    )


@dataclass(frozen=True)
class BenchEntry:
    """One bench as ``hil bench list`` shows it."""

    name: str
    source: str
    description: str
    simulated: bool


class BenchConfig:
    """The benches known here: the built-in ``sim`` and those of the configuration file."""

    def __init__(self, file: ConfigFile | None, *, env: Mapping[str, str] | None = None) -> None:
        self.file = file
        self.env: Mapping[str, str] = os.environ if env is None else env

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> BenchConfig:
        """Find and read the configuration file (see the module docstring for the order)."""
        env = os.environ if env is None else env
        location = find_config_file(config_file, env=env, cwd=cwd)
        return cls(load_config_file(location) if location else None, env=env)

    def names(self) -> list[str]:
        """Return every bench name, ``sim`` first."""
        return [SIM_BENCH, *(self.file.spec.benches if self.file else ())]

    def entries(self) -> list[BenchEntry]:
        """Return every bench with where it is defined."""
        entries = [BenchEntry(SIM_BENCH, "built-in", "the simulated demo vehicle", simulated=True)]
        if self.file is not None:
            for name, spec in self.file.spec.benches.items():
                where = self.file.where(("benches", name))
                entries.append(BenchEntry(name, where, spec.description, simulated=False))
        return entries

    def select(self, name: str | None = None) -> tuple[str, str]:
        """Return the bench to use and why, ``(name, origin)``, by the resolution order."""
        if name:
            return name, "--bench"
        from_env = self.env.get(ENV_BENCH)
        if from_env:
            return from_env, ENV_BENCH
        if self.file is not None and self.file.spec.default_bench:
            return self.file.spec.default_bench, f"default_bench in {self.file.name}"
        return SIM_BENCH, "built-in default"

    def bench(self, name: str | None = None) -> Bench:
        """Resolve the bench ``name`` (or the one :meth:`select` picks).

        Raises:
            UnknownBenchError: no bench has that name.
            BenchConfigError: the bench's configuration does not resolve.
        """
        chosen, origin = self.select(name)
        if chosen == SIM_BENCH:
            return sim_bench(self.env)
        file = self.file
        if file is None or chosen not in file.spec.benches:
            where = f"benches: {', '.join(self.names())}"
            where += f" (from {file.name})" if file else " (no configuration file found)"
            message = f"no bench {chosen!r} ({origin}); {where}"
            raise UnknownBenchError(ConfigIssue(None, None, "", message))
        path: TomlPath = ("benches", chosen)
        return resolve_spec(
            chosen,
            file.spec.benches[chosen],
            source=file.where(path),
            env=self.env,
            base_dir=file.base_dir,
            path=path,
            locate=file.issue,
            shown_file=file.name,
        )


def resolve_bench(
    name: str | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Bench:
    """Resolve a bench by the full order: arguments > environment > ``hil.toml`` > ``sim``.

    ``name`` and ``config_file`` stand for ``--bench`` and ``--hil-config``; ``env``
    defaults to :data:`os.environ`.
    """
    return BenchConfig.load(config_file, env=env).bench(name)


__all__ = [
    "BenchConfig",
    "BenchEntry",
    "ConfigFile",
    "load_config_file",
    "resolve_bench",
    "resolve_spec",
    "sim_bench",
]
