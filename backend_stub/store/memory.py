"""An in-memory store: the same contract as the SQL store, for virtual-time fleets and tests.

Transactions are serialised by one lock and undone on error with an undo log,
so a failed request leaves no trace, as in the database. Wave counts are kept
as running counters, of the states present only, so that a campaign over a
million vehicles costs O(1) per report.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import sys
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from backend_stub.model import (
    ACTIVE_ACTION_STATES,
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
    copy_with,
)

T = TypeVar("T")
# The filter with nothing set, which every vehicle matches.
_EVERY_VEHICLE = VehicleFilter()

# Undo entries name the unbound method and its object, ``(dict.__setitem__,
# table, key, value)``, rather than a bound method: binding allocates an object
# per entry, and a fleet pushes millions of them.
_dict_set = dict.__setitem__
_set_discard = set.discard


class _History:
    """A campaign's events in order, and their keys in a parallel array."""

    __slots__ = ("events", "keys")

    def __init__(self) -> None:
        self.events: list[CampaignEvent] = []
        self.keys: array[int] = array("q")

    def drop_last(self) -> None:
        """Forget the newest event (the undo of adding it)."""
        self.events.pop()
        self.keys.pop()


def _unmove(
    actions: dict[int, Action],
    current: Action,
    counts: dict[ActionState, int],
    left: ActionState,
    entered: ActionState,
) -> None:
    """Undo an action's move from ``left`` to ``entered``: the action, and its wave's counts.

    A count that falls to zero goes, as it would from a GROUP BY (and as
    :meth:`_MemoryTx.update_action` counts a move).
    """
    actions[current.key] = current
    counts[left] = counts.get(left, 0) + 1
    remaining = counts[entered] - 1
    if remaining:
        counts[entered] = remaining
    else:
        del counts[entered]


def _put_back(
    actions: dict[int, Action],
    replaced: list[Action],
    counts: dict[ActionState, int],
    before: dict[ActionState, int],
) -> None:
    """Undo a batch move: put back the actions it ``replaced``, and the wave's counts ``before``."""
    for action in replaced:
        actions[action.key] = action
    counts.clear()
    counts.update(before)


def _recount(counts: dict[ActionState, int], state: ActionState, number: int) -> None:
    """Put a wave's count of ``state`` back to ``number`` (the undo of a change to it)."""
    if number:
        counts[state] = number
    else:
        counts.pop(state, None)


class _MemoryTx:
    """One transaction over a :class:`MemoryStore`; every change pushes its undo."""

    __slots__ = ("_s", "_undo")

    # One lock runs the store's transactions one at a time.
    serialised = True

    def __init__(self, store: MemoryStore) -> None:
        self._s = store
        self._undo: list[tuple[Any, ...]] = []

    def rollback(self) -> None:
        undo = self._undo
        while undo:
            fn, *args = undo.pop()
            fn(*args)

    # -- helpers
    # Undo entries are (function, *arguments) tuples rather than closures: a
    # transaction pushes several per change, and a fleet makes millions of them.
    def _set(self, table: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
        if key in table:
            self._undo.append((_dict_set, table, key, table[key]))
        else:
            self._undo.append((table.pop, key, None))
        table[key] = value

    def _count(self, campaign_key: int, wave: int, state: ActionState, delta: int) -> None:
        counts = self._s.counts[campaign_key][wave]
        old = counts.get(state, 0)
        self._undo.append((_recount, counts, state, old))
        _recount(counts, state, old + delta)

    def _index_vin(self, action: Action, add: bool) -> None:
        keys = self._s.by_vin[action.vin]
        if add:
            keys.append(action.key)
            self._undo.append((keys.remove, action.key))
        else:
            keys.remove(action.key)
            self._undo.append((keys.append, action.key))

    def _next(self, name: str, count: int = 1) -> int:
        """Allocate ``count`` keys of sequence ``name``; return the first.

        Not undone on rollback: like a database sequence, a failed transaction
        leaves a gap, which nothing relies on.
        """
        sequences = self._s.sequences
        first = sequences.get(name, 0) + 1
        sequences[name] = first + count - 1
        return first

    # -- vehicles
    def get_vehicle(self, vin: str) -> Vehicle | None:
        return self._s.vehicles.get(vin)

    def put_vehicle(self, vehicle: Vehicle) -> None:
        if vehicle.vin not in self._s.vehicles:
            position = bisect.bisect_left(self._s.vins, vehicle.vin)
            self._s.vins.insert(position, vehicle.vin)
            self._undo.append((self._s.vins.remove, vehicle.vin))
        self._set(self._s.vehicles, vehicle.vin, vehicle)

    def put_vehicles(self, vehicles: Sequence[Vehicle]) -> None:
        # One undo entry and one merge of the sorted VINs for the whole batch:
        # a modeled fleet registers a million vehicles at once.
        # The undo goes first and ``previous`` fills in under it, so that a
        # batch stopped halfway (an interrupt) is undone as far as it went.
        table = self._s.vehicles
        previous: dict[str, Vehicle | None] = {}
        self._undo.append((self._s.restore_vehicles, previous))
        for vehicle in vehicles:
            vin = vehicle.vin
            if vin not in previous:
                previous[vin] = table.get(vin)
            table[vin] = vehicle
        added = sorted(vin for vin, old in previous.items() if old is None)
        vins = self._s.vins
        if added and vins and added[0] < vins[-1]:
            vins.extend(added)
            vins.sort()
        else:
            vins.extend(added)

    def touch_vehicle(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> bool:
        vehicles = self._s.vehicles
        vehicle = vehicles.get(vin)
        if vehicle is None:
            return False
        # ``_set``, written out for a key known to be there: every final report
        # touches its vehicle.
        self._undo.append((_dict_set, vehicles, vin, vehicle))
        vehicles[vin] = vehicle.touched(at, state, ecus)
        return True

    def set_telemetry(self, vin: str, values: Mapping[str, float], at: float) -> bool:
        vehicle = self._s.vehicles.get(vin)
        if vehicle is None:
            return False
        telemetry = {**vehicle.telemetry, **values}
        self._set(self._s.vehicles, vin, copy_with(vehicle, {"telemetry": telemetry}))
        return True

    def find_vehicles(
        self, flt: VehicleFilter, *, after_vin: str = "", limit: int | None = None
    ) -> list[Vehicle]:
        found: list[Vehicle] = []
        vins = self._s.vins
        selected = vins[bisect.bisect_right(vins, after_vin) if after_vin else 0 :]
        if flt == _EVERY_VEHICLE:
            # A filter with nothing set matches every vehicle: no call per
            # vehicle (a fleet's campaign and its final checks read them all).
            # At least one, as the loop below gives for a limit below 1.
            if limit is not None:
                selected = selected[: max(limit, 1)]
            return list(map(self._s.vehicles.__getitem__, selected))
        for vin in selected:
            vehicle = self._s.vehicles[vin]
            if flt.matches(vehicle):
                found.append(vehicle)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def count_vehicles(self) -> int:
        return len(self._s.vehicles)

    # -- artifacts
    def get_artifact(self, sha256: str) -> Artifact | None:
        return self._s.artifacts.get(sha256)

    def add_artifact(self, artifact: Artifact) -> bool:
        if artifact.sha256 in self._s.artifacts:
            return False
        self._set(self._s.artifacts, artifact.sha256, artifact)
        return True

    def list_artifacts(self, *, after: str, limit: int) -> list[Artifact]:
        keys = sorted(k for k in self._s.artifacts if k > after)[:limit]
        return [self._s.artifacts[k] for k in keys]

    # -- releases
    def add_release(self, release: Release) -> Release:
        stored = copy_with(release, {"key": self._next("release")})
        self._set(self._s.releases, stored.key, stored)
        return stored

    def sign_release(self, key: int, *, metadata: bytes, signature: bytes) -> None:
        release = self._s.releases[key]
        self._set(
            self._s.releases,
            key,
            copy_with(release, {"metadata": metadata, "signature": signature}),
        )

    def get_release(self, key: int) -> Release | None:
        return self._s.releases.get(key)

    def find_release(self, *, name: str, version: str) -> Release | None:
        for release in self._s.releases.values():
            if release.name == name and release.version == version:
                return release
        return None

    def release_by_request(self, request_id: str) -> Release | None:
        for release in self._s.releases.values():
            if release.request_id == request_id:
                return release
        return None

    def list_releases(self, *, after_key: int, limit: int) -> list[Release]:
        keys = sorted(k for k in self._s.releases if k > after_key)[:limit]
        return [self._s.releases[k] for k in keys]

    # -- campaigns
    def add_campaign(self, campaign: Campaign, targets: Sequence[tuple[str, int]]) -> Campaign:
        stored = copy_with(campaign, {"key": self._next("campaign")})
        self._set(self._s.campaigns, stored.key, stored)
        if stored.request_id:
            self._set(self._s.campaign_requests, stored.request_id, stored.key)
        # One key range and one undo entry for all the targets: a campaign may
        # target a million vehicles.
        first = self._next("action", len(targets))
        actions = self._s.actions
        by_vin = self._s.by_vin
        waves: dict[int, list[int]] = defaultdict(list)
        at = campaign.created_at
        scheduled = ActionState.SCHEDULED
        for key, (vin, wave) in enumerate(targets, start=first):
            actions[key] = Action(key, stored.key, vin, wave, scheduled, at)
            by_vin[vin].append(key)
            waves[wave].append(key)
        self._undo.append((self._s.drop_actions, first, len(targets)))
        for wave, keys in waves.items():
            self._set(self._s.by_wave, (stored.key, wave), keys)
            self._count(stored.key, wave, ActionState.SCHEDULED, len(keys))
        return stored

    def get_campaign(self, key: int, *, lock: bool = False) -> Campaign | None:
        return self._s.campaigns.get(key)

    def campaign_by_request(self, request_id: str) -> Campaign | None:
        key = self._s.campaign_requests.get(request_id)
        return None if key is None else self._s.campaigns[key]

    def update_campaign(self, campaign: Campaign) -> None:
        self._set(self._s.campaigns, campaign.key, campaign)

    def list_campaigns(
        self, *, after_key: int, limit: int, states: Collection[CampaignState] = ()
    ) -> list[Campaign]:
        found = [
            c
            for k, c in sorted(self._s.campaigns.items())
            if k > after_key and (not states or c.state in states)
        ]
        return found[:limit]

    def count_campaigns(self) -> dict[CampaignState, int]:
        counts: dict[CampaignState, int] = {}
        for campaign in self._s.campaigns.values():
            counts[campaign.state] = counts.get(campaign.state, 0) + 1
        return counts

    # -- actions
    def get_action(self, key: int) -> Action | None:
        return self._s.actions.get(key)

    def update_action(self, action: Action, *, expected: ActionState) -> bool:
        # The hottest write of a fleet: one undo entry, whether or not the
        # state changes.
        actions = self._s.actions
        current = actions.get(action.key)
        if current is None:
            return False
        left = current.state
        if left is not expected:
            return False
        actions[action.key] = action
        entered = action.state
        if entered is left:
            self._undo.append((_dict_set, actions, action.key, current))
            return True
        counts = self._s.counts[action.campaign_key][action.wave]
        # One action out of ``left`` and into ``entered``; a count that falls
        # to zero goes, as it would from a GROUP BY.
        remaining = counts[left] - 1
        if remaining:
            counts[left] = remaining
        else:
            del counts[left]
        counts[entered] = counts.get(entered, 0) + 1
        self._undo.append((_unmove, actions, current, counts, left, entered))
        return True

    def actions_of_vehicle(self, vin: str, states: Collection[ActionState]) -> list[Action]:
        keys = self._s.by_vin.get(vin)
        if not keys:
            return []
        actions = self._s.actions
        if len(keys) == 1:  # most vehicles are in one campaign: no sort, no generator
            action = actions[keys[0]]
            return [action] if action.state in states else []
        return [a for a in (actions[k] for k in sorted(keys)) if a.state in states]

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
        campaign = self._s.campaigns[campaign_key]
        waves = range(len(campaign.wave_sizes)) if wave is None else (wave,)
        # An action already in ``to`` stays as it is, as the SQL store's UPDATE
        # leaves it out.
        states = tuple(state for state in states if state is not to)
        if not states:
            return 0
        # No action ever becomes SCHEDULED again: a move of SCHEDULED actions
        # starts at the wave's cursor (everything before it has left that
        # state) and leaves the cursor where it stopped.
        scheduled_only = states == (ActionState.SCHEDULED,)
        moved = 0
        actions = self._s.actions
        for index in waves:
            room = len(actions) if limit is None else limit - moved
            if room <= 0:
                break
            counts = self._s.counts[campaign_key][index]
            if not any(counts.get(s, 0) for s in states):
                continue
            keys = self._s.by_wave.get((campaign_key, index), [])
            cursor_key = (campaign_key, index)
            start = self._s.cursors.get(cursor_key, 0) if scheduled_only else 0
            # Written as one batch rather than through ``update_action``: one undo
            # entry and one change of the counts per wave, not per action (a wave
            # of a fleet moves hundreds of thousands at its start). The undo goes
            # first and ``replaced`` fills in under it, so that a move stopped
            # halfway (an interrupt) is undone as far as it went.
            replaced: list[Action] = []
            self._undo.append((_put_back, actions, replaced, counts, dict(counts)))
            left: dict[ActionState, int] = {}
            position, end = start, len(keys)
            while position < end and len(replaced) < room:
                action = actions[keys[position]]
                position += 1
                state = action.state
                if state in states:
                    replaced.append(action)  # before the write, which it undoes
                    actions[action.key] = action.advanced(
                        to,
                        at,
                        action.attempts,
                        action.progress_pct,
                        action.failure_step,
                        action.failure_reason,
                    )
                    left[state] = left.get(state, 0) + 1
            for state, number in left.items():
                _recount(counts, state, counts[state] - number)
            if replaced:
                counts[to] = counts.get(to, 0) + len(replaced)
                moved += len(replaced)
            if scheduled_only and position != start:
                self._set(self._s.cursors, cursor_key, position)
        return moved

    def wave_counts(
        self, campaign_key: int, wave: int | None = None
    ) -> dict[int, dict[ActionState, int]]:
        counts: Mapping[int, dict[ActionState, int]] = self._s.counts.get(campaign_key, {})
        # Copies: the counts hold only the states present.
        if wave is not None:  # the wave rules ask for one wave after each outcome
            return {wave: dict(counts.get(wave, ()))}
        return {w: dict(counts[w]) for w in sorted(counts)}

    def count_actions(self) -> dict[ActionState, int]:
        totals: dict[ActionState, int] = {}
        for waves in self._s.counts.values():
            for counts in waves.values():
                for state, number in counts.items():
                    totals[state] = totals.get(state, 0) + number
        return totals

    def list_actions(
        self,
        campaign_key: int,
        *,
        states: Collection[ActionState] = (),
        after_key: int = 0,
        limit: int = 100,
    ) -> list[Action]:
        campaign = self._s.campaigns.get(campaign_key)
        if campaign is None:
            return []
        # Each wave's keys are ascending (allocated in one range), so a merge
        # of the waves from ``after_key`` on costs what the page costs, not a
        # sort of every key of the campaign.
        runs: list[tuple[int, int, list[int]]] = []  # (first key, its index, the wave's keys)
        for w in range(len(campaign.wave_sizes)):
            keys = self._s.by_wave.get((campaign_key, w), [])
            start = bisect.bisect_right(keys, after_key)
            if start < len(keys):
                runs.append((keys[start], start, keys))
        runs.sort()
        merged: Iterator[int]
        if all(earlier[2][-1] < later[0] for earlier, later in itertools.pairwise(runs)):
            # Waves made as one key range in wave order do not interleave: the
            # merge is a concatenation, at C speed rather than ``heapq.merge``'s.
            merged = itertools.chain.from_iterable(
                itertools.islice(keys, start, None) for _, start, keys in runs
            )
        else:
            merged = heapq.merge(*(itertools.islice(keys, start, None) for _, start, keys in runs))
        actions = self._s.actions
        if not states:
            # At least one, as the loop below gives for a limit below 1
            # (``islice`` takes no more than ``sys.maxsize``).
            page = itertools.islice(merged, min(max(limit, 1), sys.maxsize))
            return list(map(actions.__getitem__, page))
        found: list[Action] = []
        for key in merged:
            action = actions[key]
            if action.state in states:
                found.append(action)
                if len(found) >= limit:
                    break
        return found

    def stale_actions(
        self, campaign_key: int, *, updated_before: float, limit: int
    ) -> list[Action]:
        found = []
        for action in self.list_actions(campaign_key, states=ACTIVE_ACTION_STATES, limit=1 << 62):
            if action.updated_at < updated_before:
                found.append(action)
                if len(found) >= limit:
                    break
        return found

    # -- events
    def add_event(self, event: CampaignEvent) -> int:
        # The event is kept as given and its key in a parallel array: a copy
        # per event would cost as much as the rest of a report.
        store = self._s
        history = store.histories.get(event.campaign_key)
        if history is None:
            history = store.histories[event.campaign_key] = _History()
        key = next(store.event_keys)
        history.events.append(event)
        history.keys.append(key)
        self._undo.append((_History.drop_last, history))
        return key

    def events_after(self, campaign_key: int, *, after_key: int, limit: int) -> list[CampaignEvent]:
        history = self._s.histories.get(campaign_key) or _History()
        events, keys = history.events, history.keys
        start = bisect.bisect_right(keys, after_key)
        return [
            copy_with(event, {"key": key})
            for event, key in zip(
                events[start : start + limit], keys[start : start + limit], strict=True
            )
        ]

    # -- idempotency
    def claim_report(self, report_id: str, *, at: float) -> bool:
        reports = self._s.reports
        if report_id in reports:
            return False
        reports.add(report_id)
        self._undo.append((_set_discard, reports, report_id))
        return True


_new_tx = object.__new__


class MemoryStore:
    """The store contract in process memory (nothing survives the process)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.vehicles: dict[str, Vehicle] = {}
        self.vins: list[str] = []
        self.artifacts: dict[str, Artifact] = {}
        self.releases: dict[int, Release] = {}
        self.campaigns: dict[int, Campaign] = {}
        self.campaign_requests: dict[str, int] = {}
        self.actions: dict[int, Action] = {}
        self.by_vin: defaultdict[str, list[int]] = defaultdict(list)
        self.by_wave: dict[tuple[int, int], list[int]] = {}
        # Per (campaign, wave): the index in ``by_wave`` of the first action
        # that may still be SCHEDULED (absent: 0).
        self.cursors: dict[tuple[int, int], int] = {}
        # Per campaign and wave: how many actions are in each state (a state
        # with none is absent).
        self.counts: defaultdict[int, defaultdict[int, dict[ActionState, int]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self.histories: dict[int, _History] = {}
        self.reports: set[str] = set()
        self.sequences: dict[str, int] = {}
        # Events have a sequence of their own, a C-level counter: every report
        # advances it. Like the others, it is not wound back by a rollback.
        self.event_keys = itertools.count(1)

    def touch(
        self, vin: str, *, at: float, state: str | None, ecus: Sequence[EcuInfo] | None
    ) -> tuple[bool, bool]:
        """Record a check-in; return (registered, has unfinished actions).

        One dictionary write that cannot fail halfway, so it needs no
        transaction: the hot path of every polling vehicle.
        """
        # ``acquire`` and ``release`` called rather than ``with``: in this
        # Python, a ``with`` on a lock costs twice as much, and every check-in
        # and every report takes the lock.
        lock = self._lock
        lock.acquire()
        try:
            vehicle = self.vehicles.get(vin)
            if vehicle is None:
                return False, False
            self.vehicles[vin] = vehicle.touched(at, state, ecus)
            actions = self.actions
            for key in self.by_vin.get(vin, ()):
                if actions[key].state in UNFINISHED_STATES:
                    return True, True
            return True, False
        finally:
            lock.release()

    def restore_vehicles(self, previous: dict[str, Vehicle | None]) -> None:
        """Put back the vehicles a batch replaced and forget those it added (its undo).

        ``previous``: each VIN the batch reached, with its vehicle before the
        batch (``None``: it was not registered).
        """
        gone = set()
        for vin, vehicle in previous.items():
            if vehicle is None:
                self.vehicles.pop(vin, None)
                gone.add(vin)
            else:
                self.vehicles[vin] = vehicle
        if gone:
            self.vins[:] = [vin for vin in self.vins if vin not in gone]

    def drop_actions(self, first: int, count: int) -> None:
        """Forget actions ``first`` .. ``first + count - 1`` (the undo of a campaign's creation)."""
        for key in range(first, first + count):
            action = self.actions.pop(key)
            self.by_vin[action.vin].remove(key)

    def run(self, work: Callable[[_MemoryTx], T], *, write: bool = True) -> T:
        """Run ``work`` under the store's lock; undo its changes if it raises."""
        lock = self._lock
        lock.acquire()  # not ``with``: see ``touch``
        try:
            # ``_MemoryTx(self)`` without the call of ``__init__``: every
            # vehicle call of a fleet runs a transaction.
            tx = _new_tx(_MemoryTx)
            tx._s = self
            tx._undo = []
            try:
                return work(tx)
            except BaseException:
                tx.rollback()
                raise
        finally:
            lock.release()

    def campaign_events(self, campaign_key: int) -> list[CampaignEvent]:
        """Return a campaign's events in order, as stored (their ``key`` is not filled in).

        For whoever holds the store itself, such as a modeled fleet reading a
        million vehicles' history: ``events_after`` copies every event to set
        its key.
        """
        with self._lock:
            history = self.histories.get(campaign_key)
            return list(history.events) if history else []

    def close(self) -> None:
        """Nothing to release."""
