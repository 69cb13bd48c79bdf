"""The store contract that the engine and the services are written against.

Everything a request changes happens inside one :meth:`Store.run` call, which
is one database transaction: it commits as a whole or not at all. Both stores
pass the same contract tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from backend_stub.model import (
    UNFINISHED_STATES,
    Action,
    ActionState,
    Artifact,
    Campaign,
    CampaignEvent,
    CampaignState,
    EcuInfo,
    Release,
    Vehicle,
    VehicleFilter,
)

T = TypeVar("T")


class Tx(Protocol):
    """Operations inside one transaction."""

    serialised: bool
    """Whether transactions run one at a time, so that what this one read
    before taking a lock is still current after it (the engine then reads
    it only once)."""

    # Vehicles
    def get_vehicle(self, vin: str) -> Vehicle | None:
        """Return the vehicle with ``vin``, if registered."""

    def put_vehicle(self, vehicle: Vehicle) -> None:
        """Insert or replace a vehicle (all fields)."""

    def put_vehicles(self, vehicles: Sequence[Vehicle]) -> None:
        """Insert or replace many vehicles, as :meth:`put_vehicle` would one by one."""

    def touch_vehicle(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> bool:
        """Record a check-in; return ``False`` if the vehicle is not registered."""

    def set_telemetry(self, vin: str, values: Mapping[str, float], at: float) -> bool:
        """Merge the latest telemetry values; return ``False`` if the vehicle is unknown."""

    def find_vehicles(
        self, flt: VehicleFilter, *, after_vin: str = "", limit: int | None = None
    ) -> list[Vehicle]:
        """Vehicles matching ``flt`` with a VIN after ``after_vin``, sorted by VIN."""

    def count_vehicles(self) -> int:
        """Return the number of registered vehicles."""

    # Artifacts
    def get_artifact(self, sha256: str) -> Artifact | None:
        """Return the artifact with this digest, if stored."""

    def add_artifact(self, artifact: Artifact) -> bool:
        """Store an artifact's record; ``False`` if it existed already (nothing changes)."""

    def list_artifacts(self, *, after: str, limit: int) -> list[Artifact]:
        """Artifacts with a digest after ``after``, sorted by digest."""

    # Releases
    def add_release(self, release: Release) -> Release:
        """Store a release; return it with its key assigned."""

    def sign_release(self, key: int, *, metadata: bytes, signature: bytes) -> None:
        """Store the signed metadata of a release added in this transaction."""

    def get_release(self, key: int) -> Release | None:
        """Return a release by key."""

    def find_release(self, *, name: str, version: str) -> Release | None:
        """Return the release with this name and version, if any."""

    def release_by_request(self, request_id: str) -> Release | None:
        """Return the release created by request ``request_id``, if any."""

    def list_releases(self, *, after_key: int, limit: int) -> list[Release]:
        """Releases with a key above ``after_key``, in key order."""

    # Campaigns
    def add_campaign(self, campaign: Campaign, targets: Sequence[tuple[str, int]]) -> Campaign:
        """Store a campaign with one SCHEDULED action per ``(vin, wave)``; assign keys."""

    def get_campaign(self, key: int, *, lock: bool = False) -> Campaign | None:
        """Return a campaign; ``lock`` serialises other writers of it until commit."""

    def campaign_by_request(self, request_id: str) -> Campaign | None:
        """Return the campaign created by request ``request_id``, if any."""

    def update_campaign(self, campaign: Campaign) -> None:
        """Replace a campaign's stored fields."""

    def list_campaigns(
        self, *, after_key: int, limit: int, states: Collection[CampaignState] = ()
    ) -> list[Campaign]:
        """Campaigns with a key above ``after_key`` (in ``states`` if given), in key order."""

    def count_campaigns(self) -> dict[CampaignState, int]:
        """Return the number of campaigns in each state."""

    # Actions
    def get_action(self, key: int) -> Action | None:
        """Return an action by key."""

    def update_action(self, action: Action, *, expected: ActionState) -> bool:
        """Store ``action`` if its stored state is still ``expected``; return whether it was."""

    def actions_of_vehicle(self, vin: str, states: Collection[ActionState]) -> list[Action]:
        """Return the vehicle's actions in ``states``, in key order."""

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
        """Move the actions of a campaign (or one wave) in ``states`` to ``to``; return count.

        ``limit`` moves at most that many, lowest keys first (``None``: all).
        An action already in ``to`` is left as it is, and not counted.
        Moving a wave's SCHEDULED actions costs a store O(moved), not a scan
        of the wave: a rollout rate moves a few at a time from a wave of millions.
        """

    def wave_counts(
        self, campaign_key: int, wave: int | None = None
    ) -> dict[int, dict[ActionState, int]]:
        """Per wave (or for one wave), the number of actions in each state."""

    def count_actions(self) -> dict[ActionState, int]:
        """Return the number of actions in each state over all campaigns."""

    def list_actions(
        self,
        campaign_key: int,
        *,
        states: Collection[ActionState] = (),
        after_key: int = 0,
        limit: int = 100,
    ) -> list[Action]:
        """Return a campaign's actions (in ``states`` if given) above ``after_key``."""

    def stale_actions(
        self, campaign_key: int, *, updated_before: float, limit: int
    ) -> list[Action]:
        """Return the vehicle-owned actions last updated before ``updated_before``."""

    # Events
    def add_event(self, event: CampaignEvent) -> int:
        """Append an event (its ``key`` is ignored); return the key assigned to it."""

    def events_after(self, campaign_key: int, *, after_key: int, limit: int) -> list[CampaignEvent]:
        """Return a campaign's events with a key above ``after_key``, in order."""

    # Idempotency
    def claim_report(self, report_id: str, *, at: float) -> bool:
        """Record a report id; ``False`` if it had been recorded before."""


def touch_in(
    tx: Tx, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
) -> tuple[bool, bool]:
    """:meth:`Store.touch` inside a transaction: (registered, has unfinished actions)."""
    if not tx.touch_vehicle(vin, at=at, state=state, ecus=ecus):
        return False, False
    return True, bool(tx.actions_of_vehicle(vin, UNFINISHED_STATES))


class Store(Protocol):
    """A transactional store."""

    def touch(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> tuple[bool, bool]:
        """Record a check-in on its own; return (registered, has unfinished actions).

        The hot path of every polling vehicle, so a store may take a shorter
        road than :meth:`run` as long as the change is committed on return.
        """

    def run(self, work: Callable[[Tx], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction and commit; roll back if it raises."""

    def close(self) -> None:
        """Release connections and files."""
