"""The store over SQLAlchemy 2 Core: a SQLite file by default, PostgreSQL for shared use.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives the backend being killed at any point (only an operating-system crash
or power loss may lose the last commits). Write transactions start with
``BEGIN IMMEDIATE`` so that two writers queue instead of failing on upgrade.

On PostgreSQL several backend processes share one database: a campaign's
writers serialise on its row (``SELECT ... FOR UPDATE``), actions change by
compare-and-set, and duplicate inserts are ``ON CONFLICT DO NOTHING``, so no
replica keeps state another would miss. Deadlocks and serialisation failures
are retried.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from backend_stub.errors import InvalidArgument, StoreError
from backend_stub.model import (
    ACTIVE_ACTION_STATES,
    UNFINISHED_STATES,
    AbortCriterion,
    Action,
    ActionState,
    Artifact,
    Campaign,
    CampaignEvent,
    CampaignState,
    EcuInfo,
    Release,
    ReleaseImage,
    RolloutRate,
    Vehicle,
    VehicleFilter,
    as_fields,
)
from backend_stub.store.base import touch_in

log = logging.getLogger(__name__)
T = TypeVar("T")
SCHEMA_VERSION = 2
_RETRIES = 8
# How long SQLite waits for another writer's lock before "database is locked".
_SQLITE_BUSY_TIMEOUT_S = 30
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock.
_RETRY_SQLSTATES = {"40001", "40P01"}

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
)

vehicles = sa.Table(
    "vehicles",
    metadata,
    sa.Column("vin", sa.String(17), primary_key=True),
    sa.Column("model", sa.String(100), nullable=False, index=True),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("ecus", sa.Text, nullable=False),
    sa.Column("state", sa.String(100), nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    sa.Column("checkins", sa.BigInteger, nullable=False),
    sa.Column("telemetry", sa.Text, nullable=False),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("hardware_id", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("anti_rollback", sa.BigInteger, nullable=False),
    sa.Column("signing_key_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("key", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("images", sa.Text, nullable=False),
    sa.Column("metadata", sa.LargeBinary, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("signing_key_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("request_id", sa.String(100), nullable=True, unique=True),
    sa.UniqueConstraint("name", "version"),
)

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("key", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("release_key", sa.Integer, sa.ForeignKey("releases.key"), nullable=False),
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("filter", sa.Text, nullable=False),
    sa.Column("wave_sizes", sa.Text, nullable=False),
    sa.Column("success_threshold_pct", sa.Float, nullable=False),
    sa.Column("error_threshold_pct", sa.Float, nullable=False),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("action_timeout_s", sa.Integer, nullable=False),
    sa.Column("target_count", sa.Integer, nullable=False),
    sa.Column("excluded_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("current_wave", sa.Integer, nullable=False),
    sa.Column("pause_reason", sa.Text, nullable=False),
    sa.Column("accepted_waves", sa.Text, nullable=False),
    sa.Column("auto_paused", sa.Boolean, nullable=False),
    sa.Column("request_id", sa.String(100), nullable=True, unique=True),
    # Schema version 2: timed waves, rollout rate, abort criteria. Server
    # defaults let a version-1 table gain the columns in place.
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("wave_start_after_s", sa.Text, nullable=False, server_default="[]"),
    sa.Column("awaiting_start", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rollout_rate", sa.Text, nullable=True),
    sa.Column("abort_criteria", sa.Text, nullable=False, server_default="[]"),
    sa.Column("rate_per_minute", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("released", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("rate_mark", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("release_credit", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("released_at", sa.Float, nullable=True),
)
# The columns version 2 added to ``campaigns``, in order.
_V2_CAMPAIGN_COLUMNS = (
    "started_at",
    "wave_start_after_s",
    "awaiting_start",
    "rollout_rate",
    "abort_criteria",
    "rate_per_minute",
    "released",
    "rate_mark",
    "release_credit",
    "released_at",
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("key", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign_key", sa.Integer, sa.ForeignKey("campaigns.key"), nullable=False),
    sa.Column("vin", sa.String(17), nullable=False),
    sa.Column("wave", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("progress_pct", sa.Integer, nullable=False),
    sa.Column("failure_step", sa.String(100), nullable=False),
    sa.Column("failure_reason", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("campaign_key", "vin"),
    sa.Index("ix_actions_vin_state", "vin", "state"),
    # With the key last, a wave's SCHEDULED actions are read in key order
    # straight off the index (the rollout rate's bounded move).
    sa.Index("ix_actions_wave_state_key", "campaign_key", "wave", "state", "key"),
    sa.Index("ix_actions_state_updated", "campaign_key", "state", "updated_at"),
)

events = sa.Table(
    "campaign_events",
    metadata,
    sa.Column("key", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign_key", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("vin", sa.String(17), nullable=False),
    sa.Column("action_state", sa.String(20), nullable=True),
    sa.Column("campaign_state", sa.String(20), nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_events_campaign", "campaign_key", "key"),
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("report_id", sa.String(100), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _ecus_json(ecus: Sequence[EcuInfo]) -> str:
    return _dump([as_fields(ecu) for ecu in ecus])


def _vehicle(row: sa.Row[Any]) -> Vehicle:
    return Vehicle(
        vin=row.vin,
        model=row.model,
        tags=tuple(json.loads(row.tags)),
        ecus=tuple(EcuInfo(**e) for e in json.loads(row.ecus)),
        state=row.state,
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
        checkins=row.checkins,
        telemetry=json.loads(row.telemetry),
    )


def _artifact(row: sa.Row[Any]) -> Artifact:
    return Artifact(
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        hardware_id=row.hardware_id,
        version=row.version,
        anti_rollback=row.anti_rollback,
        signing_key_id=row.signing_key_id,
        created_at=row.created_at,
        filename=row.filename,
    )


def _release(row: sa.Row[Any]) -> Release:
    images = tuple(
        ReleaseImage(**{**i, "compatible_hardware_ids": tuple(i["compatible_hardware_ids"])})
        for i in json.loads(row.images)
    )
    return Release(
        key=row.key,
        name=row.name,
        version=row.version,
        images=images,
        metadata=bytes(row.metadata),
        signature=bytes(row.signature),
        signing_key_id=row.signing_key_id,
        created_at=row.created_at,
        request_id=row.request_id or "",
    )


def _filter_json(flt: VehicleFilter) -> str:
    return _dump({**as_fields(flt), "tags": list(flt.tags), "vins": list(flt.vins)})


def _campaign(row: sa.Row[Any]) -> Campaign:
    raw = json.loads(row.filter)
    return Campaign(
        key=row.key,
        name=row.name,
        release_key=row.release_key,
        state=CampaignState(row.state),
        filter=VehicleFilter(**{**raw, "tags": tuple(raw["tags"]), "vins": tuple(raw["vins"])}),
        wave_sizes=tuple(json.loads(row.wave_sizes)),
        success_threshold_pct=row.success_threshold_pct,
        error_threshold_pct=row.error_threshold_pct,
        max_retries=row.max_retries,
        action_timeout_s=row.action_timeout_s,
        target_count=row.target_count,
        excluded_count=row.excluded_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        current_wave=row.current_wave,
        pause_reason=row.pause_reason,
        accepted_waves=tuple(json.loads(row.accepted_waves)),
        auto_paused=bool(row.auto_paused),
        request_id=row.request_id or "",
        started_at=row.started_at,
        wave_start_after_s=tuple(json.loads(row.wave_start_after_s)),
        awaiting_start=bool(row.awaiting_start),
        rollout_rate=RolloutRate(**json.loads(row.rollout_rate)) if row.rollout_rate else None,
        abort_criteria=tuple(AbortCriterion(**c) for c in json.loads(row.abort_criteria)),
        rate_per_minute=row.rate_per_minute,
        released=row.released,
        rate_mark=row.rate_mark,
        release_credit=row.release_credit,
        released_at=row.released_at,
    )


def _campaign_values(campaign: Campaign) -> dict[str, Any]:
    return {
        "name": campaign.name,
        "release_key": campaign.release_key,
        "state": campaign.state.value,
        "filter": _filter_json(campaign.filter),
        "wave_sizes": _dump(list(campaign.wave_sizes)),
        "success_threshold_pct": campaign.success_threshold_pct,
        "error_threshold_pct": campaign.error_threshold_pct,
        "max_retries": campaign.max_retries,
        "action_timeout_s": campaign.action_timeout_s,
        "target_count": campaign.target_count,
        "excluded_count": campaign.excluded_count,
        "created_at": campaign.created_at,
        "updated_at": campaign.updated_at,
        "current_wave": campaign.current_wave,
        "pause_reason": campaign.pause_reason,
        "accepted_waves": _dump(list(campaign.accepted_waves)),
        "auto_paused": campaign.auto_paused,
        "request_id": campaign.request_id or None,
        "started_at": campaign.started_at,
        "wave_start_after_s": _dump(list(campaign.wave_start_after_s)),
        "awaiting_start": campaign.awaiting_start,
        "rollout_rate": (
            _dump(as_fields(campaign.rollout_rate)) if campaign.rollout_rate is not None else None
        ),
        "abort_criteria": _dump([as_fields(c) for c in campaign.abort_criteria]),
        "rate_per_minute": campaign.rate_per_minute,
        "released": campaign.released,
        "rate_mark": campaign.rate_mark,
        "release_credit": campaign.release_credit,
        "released_at": campaign.released_at,
    }


def _action(row: sa.Row[Any]) -> Action:
    return Action(
        key=row.key,
        campaign_key=row.campaign_key,
        vin=row.vin,
        wave=row.wave,
        state=ActionState(row.state),
        updated_at=row.updated_at,
        attempts=row.attempts,
        progress_pct=row.progress_pct,
        failure_step=row.failure_step,
        failure_reason=row.failure_reason,
    )


def _event(row: sa.Row[Any]) -> CampaignEvent:
    return CampaignEvent(
        key=row.key,
        campaign_key=row.campaign_key,
        at=row.at,
        kind=row.kind,
        vin=row.vin,
        action_state=ActionState(row.action_state) if row.action_state else None,
        campaign_state=CampaignState(row.campaign_state) if row.campaign_state else None,
        detail=row.detail,
    )


def _states(states: Iterable[ActionState]) -> list[str]:
    return [s.value for s in states]


# The statements of a check-in, built once: building a statement and its cache
# key costs more than running it on SQLite.
@functools.cache
def _touch_statement(state: bool, ecus: bool) -> sa.Update:
    values: dict[str, Any] = {
        "last_seen_at": sa.bindparam("b_at"),
        "checkins": vehicles.c.checkins + 1,
    }
    if state:
        values["state"] = sa.bindparam("b_state")
    if ecus:
        values["ecus"] = sa.bindparam("b_ecus")
    return sa.update(vehicles).where(vehicles.c.vin == sa.bindparam("b_vin")).values(values)


@functools.lru_cache(maxsize=64)
def _actions_of_vehicle_query(states: frozenset[str]) -> sa.Select[Any]:
    # One bound parameter per state, not an expanding IN, which is re-rendered at every call.
    wanted = [sa.literal(state, actions.c.state.type) for state in sorted(states)]
    return (
        sa.select(actions)
        .where(
            actions.c.vin == sa.bindparam("b_vin"),
            actions.c.state.in_(wanted) if wanted else sa.false(),
        )
        .order_by(actions.c.key)
    )


_UNFINISHED_VALUES = tuple(sorted(s.value for s in UNFINISHED_STATES))
_UNFINISHED_SQL = (
    "SELECT 1 FROM actions WHERE vin = ? AND state IN ("
    + ", ".join("?" * len(_UNFINISHED_VALUES))
    + ") LIMIT 1"
)


class _SqlTx:
    """One transaction on a connection of :class:`SqlStore`."""

    # Connections run their transactions side by side: a row read before a
    # lock is read again after it.
    serialised = False

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    # -- vehicles
    def get_vehicle(self, vin: str) -> Vehicle | None:
        row = self.conn.execute(sa.select(vehicles).where(vehicles.c.vin == vin)).first()
        return None if row is None else _vehicle(row)

    def put_vehicle(self, vehicle: Vehicle) -> None:
        values = {
            "model": vehicle.model,
            "tags": _dump(list(vehicle.tags)),
            "ecus": _ecus_json(vehicle.ecus),
            "state": vehicle.state,
            "registered_at": vehicle.registered_at,
            "last_seen_at": vehicle.last_seen_at,
            "checkins": vehicle.checkins,
            "telemetry": _dump(vehicle.telemetry),
        }
        statement = self._insert(vehicles).values(vin=vehicle.vin, **values)
        self.conn.execute(
            statement.on_conflict_do_update(index_elements=[vehicles.c.vin], set_=values)
        )

    def put_vehicles(self, vehicles: Sequence[Vehicle]) -> None:
        for vehicle in vehicles:
            self.put_vehicle(vehicle)

    def touch_vehicle(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> bool:
        parameters: dict[str, Any] = {"b_vin": vin, "b_at": at}
        if state is not None:
            parameters["b_state"] = state
        if ecus is not None:
            parameters["b_ecus"] = _ecus_json(ecus)
        statement = _touch_statement(state is not None, ecus is not None)
        return self.conn.execute(statement, parameters).rowcount == 1

    def set_telemetry(self, vin: str, values: Mapping[str, float], at: float) -> bool:
        row = self.conn.execute(
            sa.select(vehicles.c.telemetry).where(vehicles.c.vin == vin)
        ).first()
        if row is None:
            return False
        merged = {**json.loads(row.telemetry), **values}
        self.conn.execute(
            sa.update(vehicles).where(vehicles.c.vin == vin).values(telemetry=_dump(merged))
        )
        return True

    def find_vehicles(
        self, flt: VehicleFilter, *, after_vin: str = "", limit: int | None = None
    ) -> list[Vehicle]:
        query = sa.select(vehicles).order_by(vehicles.c.vin)
        if after_vin:
            query = query.where(vehicles.c.vin > after_vin)
        if flt.model:
            query = query.where(vehicles.c.model == flt.model)
        if flt.vins:
            query = query.where(vehicles.c.vin.in_(flt.vins))
        found: list[Vehicle] = []
        # Tags and ECUs are JSON; they are matched here, the rest in SQL.
        for row in self.conn.execute(query).yield_per(1000):
            vehicle = _vehicle(row)
            if flt.matches(vehicle):
                found.append(vehicle)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def count_vehicles(self) -> int:
        return int(self.conn.execute(sa.select(sa.func.count()).select_from(vehicles)).scalar_one())

    # -- artifacts
    def get_artifact(self, sha256: str) -> Artifact | None:
        row = self.conn.execute(sa.select(artifacts).where(artifacts.c.sha256 == sha256)).first()
        return None if row is None else _artifact(row)

    def add_artifact(self, artifact: Artifact) -> bool:
        statement = self._insert(artifacts).values(**as_fields(artifact))
        # RETURNING tells reliably whether the row went in (rowcount does not, on every driver).
        inserted = statement.on_conflict_do_nothing().returning(artifacts.c.sha256)
        return self.conn.execute(inserted).first() is not None

    def list_artifacts(self, *, after: str, limit: int) -> list[Artifact]:
        query = (
            sa.select(artifacts)
            .where(artifacts.c.sha256 > after)
            .order_by(artifacts.c.sha256)
            .limit(limit)
        )
        return [_artifact(row) for row in self.conn.execute(query)]

    # -- releases
    def add_release(self, release: Release) -> Release:
        images = [
            {**as_fields(image), "compatible_hardware_ids": list(image.compatible_hardware_ids)}
            for image in release.images
        ]
        key = self.conn.execute(
            sa.insert(releases)
            .values(
                name=release.name,
                version=release.version,
                images=_dump(images),
                metadata=release.metadata,
                signature=release.signature,
                signing_key_id=release.signing_key_id,
                created_at=release.created_at,
                request_id=release.request_id or None,
            )
            .returning(releases.c.key)
        ).scalar_one()
        return Release(**{**as_fields(release), "key": key})

    def sign_release(self, key: int, *, metadata: bytes, signature: bytes) -> None:
        self.conn.execute(
            sa.update(releases)
            .where(releases.c.key == key)
            .values(metadata=metadata, signature=signature)
        )

    def get_release(self, key: int) -> Release | None:
        row = self.conn.execute(sa.select(releases).where(releases.c.key == key)).first()
        return None if row is None else _release(row)

    def find_release(self, *, name: str, version: str) -> Release | None:
        row = self.conn.execute(
            sa.select(releases).where(releases.c.name == name, releases.c.version == version)
        ).first()
        return None if row is None else _release(row)

    def release_by_request(self, request_id: str) -> Release | None:
        row = self.conn.execute(
            sa.select(releases).where(releases.c.request_id == request_id)
        ).first()
        return None if row is None else _release(row)

    def list_releases(self, *, after_key: int, limit: int) -> list[Release]:
        query = (
            sa.select(releases)
            .where(releases.c.key > after_key)
            .order_by(releases.c.key)
            .limit(limit)
        )
        return [_release(row) for row in self.conn.execute(query)]

    # -- campaigns
    def add_campaign(self, campaign: Campaign, targets: Sequence[tuple[str, int]]) -> Campaign:
        values = _campaign_values(campaign)
        key = self.conn.execute(
            sa.insert(campaigns).values(**values).returning(campaigns.c.key)
        ).scalar_one()
        rows = [
            {
                "campaign_key": key,
                "vin": vin,
                "wave": wave,
                "state": ActionState.SCHEDULED.value,
                "attempts": 0,
                "progress_pct": 0,
                "failure_step": "",
                "failure_reason": "",
                "updated_at": campaign.created_at,
            }
            for vin, wave in targets
        ]
        for start in range(0, len(rows), 5000):
            self.conn.execute(sa.insert(actions), rows[start : start + 5000])
        return campaign.with_changes(key=key)

    def get_campaign(self, key: int, *, lock: bool = False) -> Campaign | None:
        query = sa.select(campaigns).where(campaigns.c.key == key)
        if lock:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return None if row is None else _campaign(row)

    def campaign_by_request(self, request_id: str) -> Campaign | None:
        row = self.conn.execute(
            sa.select(campaigns).where(campaigns.c.request_id == request_id)
        ).first()
        return None if row is None else _campaign(row)

    def update_campaign(self, campaign: Campaign) -> None:
        self.conn.execute(
            sa.update(campaigns)
            .where(campaigns.c.key == campaign.key)
            .values(**_campaign_values(campaign))
        )

    def list_campaigns(
        self, *, after_key: int, limit: int, states: Collection[CampaignState] = ()
    ) -> list[Campaign]:
        query = sa.select(campaigns).where(campaigns.c.key > after_key)
        if states:
            query = query.where(campaigns.c.state.in_([s.value for s in states]))
        query = query.order_by(campaigns.c.key).limit(limit)
        return [_campaign(row) for row in self.conn.execute(query)]

    def count_campaigns(self) -> dict[CampaignState, int]:
        query = sa.select(campaigns.c.state, sa.func.count()).group_by(campaigns.c.state)
        return {CampaignState(state): n for state, n in self.conn.execute(query)}

    # -- actions
    def get_action(self, key: int) -> Action | None:
        row = self.conn.execute(sa.select(actions).where(actions.c.key == key)).first()
        return None if row is None else _action(row)

    def update_action(self, action: Action, *, expected: ActionState) -> bool:
        result = self.conn.execute(
            sa.update(actions)
            .where(actions.c.key == action.key, actions.c.state == expected.value)
            .values(
                state=action.state.value,
                attempts=action.attempts,
                progress_pct=action.progress_pct,
                failure_step=action.failure_step,
                failure_reason=action.failure_reason,
                updated_at=action.updated_at,
            )
        )
        return result.rowcount == 1

    def actions_of_vehicle(self, vin: str, states: Collection[ActionState]) -> list[Action]:
        query = _actions_of_vehicle_query(frozenset(_states(states)))
        return [_action(row) for row in self.conn.execute(query, {"b_vin": vin})]

    def move_actions(
        self,
        campaign_key: int,
        *,
        wave: int | None,
        states: Collection[ActionState],
        to: ActionState,
        at: float,
        limit: int | None = None,
    ) -> int:
        conditions = [
            actions.c.campaign_key == campaign_key,
            actions.c.state.in_(_states(s for s in states if s is not to)),
        ]
        if wave is not None:
            conditions.append(actions.c.wave == wave)
        if limit is None:
            statement = sa.update(actions).where(*conditions)
        else:
            if limit <= 0:
                return 0
            # The lowest keys first: UPDATE ... WHERE key IN (SELECT ... LIMIT n)
            # (SQLite and PostgreSQL alike; neither needs UPDATE ... LIMIT).
            chosen = sa.select(actions.c.key).where(*conditions).order_by(actions.c.key)
            statement = sa.update(actions).where(actions.c.key.in_(chosen.limit(limit)))
        return int(self.conn.execute(statement.values(state=to.value, updated_at=at)).rowcount)

    def wave_counts(
        self, campaign_key: int, wave: int | None = None
    ) -> dict[int, dict[ActionState, int]]:
        query = sa.select(actions.c.wave, actions.c.state, sa.func.count()).where(
            actions.c.campaign_key == campaign_key
        )
        if wave is not None:
            query = query.where(actions.c.wave == wave)
        counts: dict[int, dict[ActionState, int]] = {}
        if wave is not None:
            counts[wave] = {}
        for index, state, number in self.conn.execute(
            query.group_by(actions.c.wave, actions.c.state)
        ):
            counts.setdefault(index, {})[ActionState(state)] = number
        return dict(sorted(counts.items()))

    def count_actions(self) -> dict[ActionState, int]:
        query = sa.select(actions.c.state, sa.func.count()).group_by(actions.c.state)
        return {ActionState(state): n for state, n in self.conn.execute(query)}

    def list_actions(
        self,
        campaign_key: int,
        *,
        states: Collection[ActionState] = (),
        after_key: int = 0,
        limit: int = 100,
    ) -> list[Action]:
        query = sa.select(actions).where(
            actions.c.campaign_key == campaign_key, actions.c.key > after_key
        )
        if states:
            query = query.where(actions.c.state.in_(_states(states)))
        query = query.order_by(actions.c.key).limit(limit)
        return [_action(row) for row in self.conn.execute(query)]

    def stale_actions(
        self, campaign_key: int, *, updated_before: float, limit: int
    ) -> list[Action]:
        query = (
            sa.select(actions)
            .where(
                actions.c.campaign_key == campaign_key,
                actions.c.state.in_(_states(ACTIVE_ACTION_STATES)),
                actions.c.updated_at < updated_before,
            )
            .order_by(actions.c.key)
            .limit(limit)
        )
        return [_action(row) for row in self.conn.execute(query)]

    # -- events
    def add_event(self, event: CampaignEvent) -> int:
        key: int = self.conn.execute(
            sa.insert(events)
            .values(
                campaign_key=event.campaign_key,
                at=event.at,
                kind=event.kind,
                vin=event.vin,
                action_state=event.action_state.value if event.action_state else None,
                campaign_state=event.campaign_state.value if event.campaign_state else None,
                detail=event.detail,
            )
            .returning(events.c.key)
        ).scalar_one()
        return key

    def events_after(self, campaign_key: int, *, after_key: int, limit: int) -> list[CampaignEvent]:
        query = (
            sa.select(events)
            .where(events.c.campaign_key == campaign_key, events.c.key > after_key)
            .order_by(events.c.key)
            .limit(limit)
        )
        return [_event(row) for row in self.conn.execute(query)]

    # -- idempotency
    def claim_report(self, report_id: str, *, at: float) -> bool:
        statement = self._insert(reports).values(report_id=report_id, at=at)
        inserted = statement.on_conflict_do_nothing().returning(reports.c.report_id)
        return self.conn.execute(inserted).first() is not None


def _migrate_v1_to_v2(conn: Connection) -> None:
    """Bring a version-1 database to version 2 in place, in the caller's transaction.

    The campaigns table gains the columns of timed waves, rollout rates and
    abort criteria, with defaults that keep every existing campaign's rules
    as they were; the wave index gains the action key. A replica migrating at
    the same moment fails on the duplicate column and retries, then finds
    version 2.
    """
    for name in _V2_CAMPAIGN_COLUMNS:
        column = sa.schema.CreateColumn(campaigns.c[name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE campaigns ADD COLUMN {column}")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_actions_wave_state")
    for index in actions.indexes:
        if index.name == "ix_actions_wave_state_key":
            index.create(conn, checkfirst=True)
    conn.execute(sa.update(schema_info).values(version=SCHEMA_VERSION))
    log.info("database schema migrated from version 1 to %d", SCHEMA_VERSION)


def sqlite_url(data_dir: str | Path) -> str:
    """Return the URL of the backend's SQLite file in ``data_dir``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'backend.sqlite3'}"


class SqlStore:
    """The store contract over a SQLAlchemy engine (SQLite file or PostgreSQL)."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        try:
            parsed = sa.make_url(url)
        except exc.ArgumentError as error:
            raise InvalidArgument(f"database URL {url!r} is not valid: {error}") from error
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise InvalidArgument(
                f"database URL {url!r}: only sqlite:/// and postgresql+psycopg:// are supported"
            )
        try:
            if self.dialect == "sqlite":
                self.engine = self._sqlite_engine(url, pool_size)
            else:
                self.engine = sa.create_engine(
                    url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True
                )
        except (ImportError, exc.ArgumentError) as error:
            raise InvalidArgument(f"database URL {parsed!r}: {error}") from error
        self._writer = self.engine.execution_options(hil_write=True)
        # SQLite admits one writer at a time; a thread that finds the file locked
        # sleeps in SQLite's busy handler (1, 2, 5, ... 100 ms) before it tries
        # again. Writers of this process queue on a lock instead, and start the
        # moment the previous one commits. Other processes still meet the busy
        # handler, and so does a writer that waited longer than the busy timeout
        # (it then fails as it did without the lock); reentrant for the same reason.
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        self._sqlite_path = parsed.database if self.dialect == "sqlite" else None
        self._raw = threading.local()
        self._raw_connections: list[sqlite3.Connection] = []
        self._create_schema()

    @staticmethod
    def _sqlite_engine(url: str, pool_size: int) -> Engine:
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S},
            pool_size=pool_size,
            max_overflow=pool_size * 2,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from pysqlite so that BEGIN IMMEDIATE works.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("hil_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def _create_schema(self) -> None:
        for attempt in range(_RETRIES):
            try:
                with self._writer.begin() as conn:
                    metadata.create_all(conn, checkfirst=True)
                    found = conn.execute(sa.select(schema_info.c.version)).scalars().all()
                    if not found:
                        conn.execute(sa.insert(schema_info).values(version=SCHEMA_VERSION))
                    elif max(found) == 1:
                        _migrate_v1_to_v2(conn)
                    elif max(found) != SCHEMA_VERSION:
                        raise StoreError(
                            f"the database has schema version {max(found)}; this backend "
                            f"needs {SCHEMA_VERSION}"
                        )
                return
            except (exc.IntegrityError, exc.ProgrammingError, exc.OperationalError) as error:
                # Another replica creating the same tables at the same moment.
                if attempt == _RETRIES - 1:
                    raise StoreError(f"cannot create the database schema: {error}") from error
                time.sleep(0.05 * (attempt + 1))

    def run(self, work: Callable[[_SqlTx], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction; retry it on deadlocks and lock timeouts."""
        if not write:
            return self._run(work, self.engine)
        if self._write_lock is None:
            return self._run(work, self._writer)
        locked = self._write_lock.acquire(timeout=_SQLITE_BUSY_TIMEOUT_S)
        try:
            return self._run(work, self._writer)
        finally:
            if locked:
                self._write_lock.release()

    def _run(self, work: Callable[[_SqlTx], T], engine: Engine) -> T:
        for attempt in range(_RETRIES):
            try:
                with engine.begin() as conn:
                    return work(_SqlTx(conn, self.dialect))
            except exc.DBAPIError as error:
                if attempt < _RETRIES - 1 and self._transient(error):
                    time.sleep(0.002 * (2**attempt))
                    continue
                raise StoreError(f"database error: {error.orig}") from error
        raise AssertionError("unreachable")

    def _transient(self, error: exc.DBAPIError) -> bool:
        if self.dialect == "postgresql":
            return getattr(error.orig, "sqlstate", None) in _RETRY_SQLSTATES
        return "locked" in str(error.orig) or "busy" in str(error.orig)

    def touch(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> tuple[bool, bool]:
        """Record a check-in; return (registered, has unfinished actions).

        On SQLite this runs two plain statements on a connection of the
        calling thread's own, outside SQLAlchemy: a polling fleet makes this
        the backend's most frequent request, and the ORM-free path costs a
        fraction of a pooled transaction. The UPDATE commits on its own.
        """
        if self._sqlite_path is None:
            return self.run(lambda tx: touch_in(tx, vin, at=at, state=state, ecus=ecus))
        conn = self._raw_connection()
        assignments = "last_seen_at = ?, checkins = checkins + 1"
        parameters: list[Any] = [at]
        if state is not None:
            assignments += ", state = ?"
            parameters.append(state)
        if ecus is not None:
            assignments += ", ecus = ?"
            parameters.append(_ecus_json(ecus))
        parameters.append(vin)
        assert self._write_lock is not None
        try:
            with self._write_lock:
                updated = conn.execute(
                    f"UPDATE vehicles SET {assignments} WHERE vin = ?", parameters
                ).rowcount
            if updated != 1:
                return False, False
            busy = conn.execute(_UNFINISHED_SQL, (vin, *_UNFINISHED_VALUES)).fetchone()
        except sqlite3.Error as error:
            raise StoreError(f"database error: {error}") from error
        return True, busy is not None

    def _raw_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._raw, "conn", None)
        if conn is None:
            assert self._sqlite_path is not None
            # Autocommit: each statement is its own transaction.
            conn = sqlite3.connect(
                self._sqlite_path,
                timeout=_SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            self._raw.conn = conn
            with self._write_lock or threading.Lock():
                self._raw_connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every pooled connection."""
        for conn in self._raw_connections:
            conn.close()
        self._raw_connections.clear()
        self._raw = threading.local()
        self.engine.dispose()
