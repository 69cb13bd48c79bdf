"""The gRPC services: a thin layer of conversion, authorisation and metrics over OtaBackend.

Each RPC is wrapped by :func:`_unary` or :func:`_streaming`, which resolve the
caller's identity, enforce the method's role, turn a :class:`BackendError`
into the call's status code with its message, and record the request in the
metrics. Anything else escaping a handler is a bug: it is logged with its
traceback and answered with INTERNAL, and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from backend_stub.api import (
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    device_pb2,
    device_pb2_grpc,
    update_pb2,
    update_pb2_grpc,
)
from backend_stub.engine import CampaignStatus, Offer
from backend_stub.errors import (
    BackendError,
    InvalidArgument,
    PermissionDenied,
    PkiError,
    Unauthenticated,
)
from backend_stub.metrics import Metrics
from backend_stub.model import (
    DEFAULT_ERROR_THRESHOLD_PCT,
    DEFAULT_SUCCESS_THRESHOLD_PCT,
    AbortCriterion,
    AbortFailure,
    Action,
    ActionState,
    Artifact,
    CampaignEvent,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    EcuInfo,
    RateTrigger,
    Release,
    RolloutRate,
    Vehicle,
    VehicleFilter,
    WaveSpec,
    as_fields,
)
from backend_stub.pki import ROLE_OPERATOR, ROLE_VEHICLE, Identity, identity_from_pem
from backend_stub.service import OtaBackend, Page, check_filter, check_vin

log = logging.getLogger(__name__)
access_log = logging.getLogger("backend_stub.access")
F = TypeVar("F", bound=Callable[..., Any])

OPERATOR = "operator"
VEHICLE = "vehicle"
EITHER = "either"


# ------------------------------------------------------------------ identity
class Authorizer:
    """Who is calling: the client certificate's identity, or nobody on an insecure port."""

    def __init__(self, *, tls: bool) -> None:
        self.tls = tls

    def identify(self, context: grpc.ServicerContext) -> Identity | None:
        """Return the caller's identity (``None`` when TLS is off: everyone is trusted)."""
        if not self.tls:
            return None
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("a client certificate is required")
        return _identity(bytes(pems[0]))

    @staticmethod
    def require(identity: Identity | None, role: str, method: str) -> None:
        """Refuse a caller whose role does not fit the method."""
        if identity is None or role == EITHER:
            if identity is not None and identity.role not in (ROLE_OPERATOR, ROLE_VEHICLE):
                raise PermissionDenied(f"{method} needs an operator or vehicle certificate")
            return
        wanted = ROLE_OPERATOR if role == OPERATOR else ROLE_VEHICLE
        if identity.role != wanted:
            raise PermissionDenied(
                f"{method} needs a{'n' if wanted == ROLE_OPERATOR else ''} {wanted} certificate; "
                f"the caller is {identity.role} {identity.name!r}"
            )


@functools.lru_cache(maxsize=4096)
def _identity(pem: bytes) -> Identity:
    try:
        return identity_from_pem(pem)
    except PkiError as exc:
        raise Unauthenticated(f"the client certificate names no known role: {exc}") from exc


def vehicle_vin(identity: Identity | None, claimed: str) -> str:
    """Return the VIN a vehicle call acts for: its certificate's, which the request must match."""
    if identity is None:
        return check_vin(claimed)
    if claimed and claimed != identity.name:
        raise PermissionDenied(
            f"the certificate is for vehicle {identity.name}; the request names {claimed}"
        )
    return identity.name


# ---------------------------------------------------------------- conversion
def timestamp(seconds: float) -> Timestamp:
    """Return a protobuf timestamp for epoch seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def action_state_pb(state: ActionState) -> str:
    """Return the proto enum label of an action state (protobuf accepts labels for enums)."""
    return f"ACTION_STATE_{state.name}"


def action_state(value: int, what: str) -> ActionState:
    """Return the action state of a proto enum value."""
    try:
        name = common_pb2.ActionState.Name(value)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {value} is not an action state") from exc
    if name == "ACTION_STATE_UNSPECIFIED":
        raise InvalidArgument(f"{what} is required")
    return ActionState[name.removeprefix("ACTION_STATE_")]


def campaign_state_pb(state: CampaignState) -> str:
    """Return the proto enum label of a campaign state."""
    return f"CAMPAIGN_STATE_{state.name}"


def ecu_pb(ecu: EcuInfo) -> common_pb2.EcuInfo:
    """Convert an ECU record."""
    return common_pb2.EcuInfo(**as_fields(ecu))


def ecu(message: common_pb2.EcuInfo) -> EcuInfo:
    """Convert an ECU message."""
    return EcuInfo(
        name=message.name,
        hardware_id=message.hardware_id,
        part_number=message.part_number,
        software_version=message.software_version,
        serial_number=message.serial_number,
        active_bank=message.active_bank,
        anti_rollback=message.anti_rollback,
    )


def vehicle_filter(message: common_pb2.VehicleFilter) -> VehicleFilter:
    """Convert a filter message."""
    return VehicleFilter(
        model=message.model,
        tags=tuple(message.tags),
        vins=tuple(message.vins),
        ecu_name=message.ecu_name,
        hardware_id=message.hardware_id,
        software_version=message.software_version,
    )


def vehicle_filter_pb(flt: VehicleFilter) -> common_pb2.VehicleFilter:
    """Convert a filter."""
    return common_pb2.VehicleFilter(
        model=flt.model,
        tags=list(flt.tags),
        vins=list(flt.vins),
        ecu_name=flt.ecu_name,
        hardware_id=flt.hardware_id,
        software_version=flt.software_version,
    )


def vehicle_pb(vehicle: Vehicle) -> device_pb2.Vehicle:
    """Convert a vehicle."""
    return device_pb2.Vehicle(
        vin=vehicle.vin,
        model=vehicle.model,
        tags=list(vehicle.tags),
        ecus=[ecu_pb(e) for e in vehicle.ecus],
        state=vehicle.state,
        registered_at=timestamp(vehicle.registered_at),
        last_seen_at=timestamp(vehicle.last_seen_at),
        checkins=vehicle.checkins,
        telemetry=vehicle.telemetry,
    )


def artifact_pb(artifact: Artifact, *, already_existed: bool = False) -> update_pb2.Artifact:
    """Convert an artifact."""
    return update_pb2.Artifact(
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        hardware_id=artifact.hardware_id,
        version=artifact.version,
        anti_rollback=artifact.anti_rollback,
        signing_key_id=artifact.signing_key_id,
        created_at=timestamp(artifact.created_at),
        already_existed=already_existed,
        filename=artifact.filename,
    )


def release_pb(release: Release) -> update_pb2.Release:
    """Convert a release."""
    return update_pb2.Release(
        release_id=release.release_id,
        name=release.name,
        version=release.version,
        images=[
            update_pb2.ReleaseImage(
                ecu=i.ecu,
                sha256=i.sha256,
                compatible_hardware_ids=list(i.compatible_hardware_ids),
                hardware_id=i.hardware_id,
                version=i.version,
                anti_rollback=i.anti_rollback,
                size_bytes=i.size_bytes,
            )
            for i in release.images
        ],
        metadata=release.metadata,
        signature=release.signature,
        signing_key_id=release.signing_key_id,
        created_at=timestamp(release.created_at),
    )


def _counts_pb(counts: dict[ActionState, int]) -> list[common_pb2.StateCount]:
    return [
        common_pb2.StateCount(state=action_state_pb(state), count=counts[state])
        for state in ActionState
        if counts.get(state)
    ]


_RATE_TRIGGERS: dict[int, RateTrigger] = {
    campaign_pb2.RATE_INCREASE_ON_UNSPECIFIED: "notified",
    campaign_pb2.RATE_INCREASE_ON_NOTIFIED: "notified",
    campaign_pb2.RATE_INCREASE_ON_SUCCEEDED: "succeeded",
}
_ABORT_FAILURES: dict[int, AbortFailure] = {
    campaign_pb2.ABORT_FAILURE_FAILED: "failed",
    campaign_pb2.ABORT_FAILURE_ROLLED_BACK: "rolled_back",
    campaign_pb2.ABORT_FAILURE_ANY: "any",
}


def wave_spec(message: campaign_pb2.WaveSpec, index: int) -> WaveSpec:
    """Convert a wave message."""
    kind = message.WhichOneof("size")
    if kind is None:
        raise InvalidArgument(f"waves[{index}] needs count or percent")
    after = message.start_after_s if message.HasField("start_after_s") else None
    if kind == "count":
        return WaveSpec(count=message.count, start_after_s=after)
    return WaveSpec(percent=message.percent, start_after_s=after)


def rollout_rate(message: campaign_pb2.RolloutRate) -> RolloutRate:
    """Convert a rollout rate message (the engine checks the values)."""
    trigger = _RATE_TRIGGERS.get(message.increase_on)
    if trigger is None:
        raise InvalidArgument(f"rollout_rate.increase_on {message.increase_on} is not known")
    return RolloutRate(
        base_per_minute=message.base_per_minute,
        increment_factor=(
            message.increment_factor if message.HasField("increment_factor") else 1.0
        ),
        increase_every=message.increase_every,
        increase_on=trigger,
        maximum_per_minute=(
            message.maximum_per_minute if message.HasField("maximum_per_minute") else None
        ),
    )


def rollout_rate_pb(rate: RolloutRate) -> campaign_pb2.RolloutRate:
    """Convert a rollout rate."""
    return campaign_pb2.RolloutRate(
        base_per_minute=rate.base_per_minute,
        increment_factor=rate.increment_factor,
        increase_every=rate.increase_every,
        increase_on=f"RATE_INCREASE_ON_{rate.increase_on.upper()}",
        maximum_per_minute=rate.maximum_per_minute,
    )


def abort_criterion(message: campaign_pb2.AbortCriterion, index: int) -> AbortCriterion:
    """Convert an abort criterion message (the engine checks the values)."""
    failure = _ABORT_FAILURES.get(message.failure)
    if failure is None:
        what = "is required" if message.failure == 0 else f"{message.failure} is not known"
        raise InvalidArgument(f"abort_criteria[{index}].failure {what}")
    return AbortCriterion(
        failure=failure, threshold_pct=message.threshold_pct, min_executed=message.min_executed
    )


def abort_criterion_pb(criterion: AbortCriterion) -> campaign_pb2.AbortCriterion:
    """Convert an abort criterion."""
    return campaign_pb2.AbortCriterion(
        failure=f"ABORT_FAILURE_{criterion.failure.upper()}",
        threshold_pct=criterion.threshold_pct,
        min_executed=criterion.min_executed,
    )


def campaign_pb(status: CampaignStatus) -> campaign_pb2.Campaign:
    """Convert a campaign with its counts."""
    campaign = status.campaign
    running = campaign.state is not CampaignState.DRAFT
    waves = []
    for index, size in enumerate(campaign.wave_sizes):
        gates = campaign.wave_start_after_s
        after = gates[index] if index < len(gates) else 0.0
        started = running and (
            index < campaign.current_wave
            or (index == campaign.current_wave and not campaign.awaiting_start)
        )
        wave = campaign_pb2.WaveStatus(
            index=index,
            size=size,
            counts=_counts_pb(status.wave_counts.get(index, {})),
            started=started,
            start_after_s=after,
        )
        if after > 0 and campaign.started_at is not None:
            wave.starts_at.CopyFrom(timestamp(campaign.started_at + after))
        waves.append(wave)
    message = campaign_pb2.Campaign(
        campaign_id=campaign.campaign_id,
        name=campaign.name,
        release_id=campaign.release_id,
        state=campaign_state_pb(campaign.state),
        pause_reason=campaign.pause_reason,
        current_wave=campaign.current_wave,
        waves=waves,
        counts=_counts_pb(status.totals()),
        success_threshold_pct=campaign.success_threshold_pct,
        error_threshold_pct=campaign.error_threshold_pct,
        max_retries=campaign.max_retries,
        action_timeout_s=campaign.action_timeout_s,
        target_count=campaign.target_count,
        excluded_count=campaign.excluded_count,
        filter=vehicle_filter_pb(campaign.filter),
        created_at=timestamp(campaign.created_at),
        updated_at=timestamp(campaign.updated_at),
        abort_criteria=[abort_criterion_pb(c) for c in campaign.abort_criteria],
    )
    if campaign.rollout_rate is not None:
        message.rollout_rate.CopyFrom(rollout_rate_pb(campaign.rollout_rate))
        message.rate_per_minute = campaign.rate_per_minute
        message.released = campaign.released
    if campaign.started_at is not None:
        message.started_at.CopyFrom(timestamp(campaign.started_at))
    return message


def action_pb(action: Action) -> campaign_pb2.Action:
    """Convert an action."""
    return campaign_pb2.Action(
        deployment_id=action.deployment_id,
        campaign_id=action.campaign_id,
        vin=action.vin,
        wave=action.wave,
        state=action_state_pb(action.state),
        attempts=action.attempts,
        progress_pct=action.progress_pct,
        failure_step=action.failure_step,
        failure_reason=action.failure_reason,
        updated_at=timestamp(action.updated_at),
    )


def event_pb(event: CampaignEvent) -> campaign_pb2.CampaignEvent:
    """Convert a campaign event."""
    return campaign_pb2.CampaignEvent(
        event_id=event.key,
        campaign_id=f"cmp-{event.campaign_key}",
        at=timestamp(event.at),
        kind=event.kind,
        vin=event.vin,
        action_state=action_state_pb(event.action_state) if event.action_state else None,
        campaign_state=campaign_state_pb(event.campaign_state) if event.campaign_state else None,
        detail=event.detail,
    )


def offer_pb(offer: Offer) -> device_pb2.DeploymentNotice:
    """Convert a check-in offer."""
    return device_pb2.DeploymentNotice(
        deployment_id=offer.action.deployment_id,
        campaign_id=offer.campaign.campaign_id,
        release_id=offer.campaign.release_id,
        state=action_state_pb(offer.action.state),
    )


def _page(size: int, token: str, backend: OtaBackend) -> Page:
    return Page(size=size, token=token, limits=backend.limits)


def _next_token(items: list[Any], limit: int, key: Callable[[Any], object]) -> str:
    return str(key(items[-1])) if len(items) == limit else ""


# ------------------------------------------------------------------ wrappers
@dataclass
class _Shared:
    backend: OtaBackend
    auth: Authorizer
    metrics: Metrics


def _abort(context: grpc.ServicerContext, error: BackendError) -> None:
    context.abort(getattr(grpc.StatusCode, error.code), str(error))


@contextlib.contextmanager
def _serving(
    shared: _Shared, method: str, role: str, context: grpc.ServicerContext
) -> Iterator[Identity | None]:
    """Authorise one call, map its errors to status codes, and record it."""
    started = time.perf_counter()
    code = "OK"
    try:
        identity = shared.auth.identify(context)
        shared.auth.require(identity, role, method)
        yield identity
    except BackendError as error:
        code = error.code
        _abort(context, error)
    except GeneratorExit:  # the caller left a stream
        code = "CANCELLED"
        raise
    except Exception:
        code = "INTERNAL"
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the backend")
    finally:
        elapsed = time.perf_counter() - started
        shared.metrics.observe(method, code, elapsed)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s %.2f ms", method, code, elapsed * 1000)


def _unary(role: str) -> Callable[[F], Callable[..., Any]]:
    def wrap(handler: F) -> Callable[..., Any]:
        method = handler.__name__

        @functools.wraps(handler)
        def run(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Any:
            with _serving(self.shared, method, role, context) as identity:
                return handler(self, request, context, identity)
            return None  # aborted: the status has been set

        return run

    return wrap


def _streaming(role: str) -> Callable[[F], Callable[..., Any]]:
    def wrap(handler: F) -> Callable[..., Any]:
        method = handler.__name__

        @functools.wraps(handler)
        def run(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _serving(self.shared, method, role, context) as identity:
                yield from handler(self, request, context, identity)

        return run

    return wrap


class _Servicer:
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared

    @property
    def backend(self) -> OtaBackend:
        return self.shared.backend


# -------------------------------------------------------------- the services
class UpdateService(_Servicer, update_pb2_grpc.UpdateServiceServicer):
    """Artifacts, releases, deployments and downloads."""

    @_unary(OPERATOR)
    def UploadArtifact(
        self, requests: Iterator[update_pb2.UploadArtifactRequest], context: Any, _: Any
    ) -> update_pb2.Artifact:
        """Receive one signed image: a header message, then data messages."""
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first message of an upload must be its header")
        header = first.header

        def chunks() -> Iterator[bytes]:
            for message in requests:
                if message.WhichOneof("part") != "data":
                    raise InvalidArgument("only data messages may follow the header")
                yield message.data

        result = self.backend.receive_artifact(
            size_bytes=header.size_bytes,
            sha256=header.sha256,
            filename=header.filename,
            chunks=chunks(),
        )
        return artifact_pb(result.artifact, already_existed=result.already_existed)

    @_unary(OPERATOR)
    def GetArtifact(self, request: Any, context: Any, _: Any) -> update_pb2.Artifact:
        """Return an artifact's record."""
        return artifact_pb(self.backend.get_artifact(request.sha256))

    @_unary(OPERATOR)
    def ListArtifacts(self, request: Any, context: Any, _: Any) -> Any:
        """List artifacts."""
        page = _page(request.page_size, request.page_token, self.backend)
        items = self.backend.list_artifacts(page)
        return update_pb2.ListArtifactsResponse(
            artifacts=[artifact_pb(a) for a in items],
            next_page_token=_next_token(items, page.limit, lambda a: a.sha256),
        )

    @_unary(OPERATOR)
    def CreateRelease(self, request: Any, context: Any, _: Any) -> update_pb2.Release:
        """Create a signed release."""
        release = self.backend.create_release(
            name=request.name,
            version=request.version,
            images=[(i.ecu, i.sha256, list(i.compatible_hardware_ids)) for i in request.images],
            request_id=request.request_id,
        )
        return release_pb(release)

    @_unary(OPERATOR)
    def GetRelease(self, request: Any, context: Any, _: Any) -> update_pb2.Release:
        """Return a release."""
        return release_pb(self.backend.get_release(request.release_id))

    @_unary(OPERATOR)
    def ListReleases(self, request: Any, context: Any, _: Any) -> Any:
        """List releases."""
        page = _page(request.page_size, request.page_token, self.backend)
        items = self.backend.list_releases(page)
        return update_pb2.ListReleasesResponse(
            releases=[release_pb(r) for r in items],
            next_page_token=_next_token(items, page.limit, lambda r: r.key),
        )

    @_unary(VEHICLE)
    def GetDeployment(self, request: Any, context: Any, identity: Any) -> Any:
        """Return one of the caller's deployments with its signed release."""
        vin = vehicle_vin(identity, request.vin)
        view = self.backend.deployment(vin, request.deployment_id)
        return update_pb2.Deployment(
            deployment_id=view.action.deployment_id,
            campaign_id=view.campaign.campaign_id,
            vin=view.action.vin,
            state=action_state_pb(view.action.state),
            release=release_pb(view.release),
            attempt=view.action.attempts,
        )

    @_streaming(EITHER)
    def Download(self, request: Any, context: Any, identity: Any) -> Iterator[Any]:
        """Stream an artifact from the requested offset."""
        if identity is None:
            vin = check_vin(request.vin) if request.vin else None
        elif identity.role == ROLE_VEHICLE:
            vin = vehicle_vin(identity, request.vin)
        else:
            vin = None
        for offset, data, total in self.backend.download(
            request.sha256, offset=request.offset, chunk_size=request.chunk_size, vin=vin
        ):
            yield update_pb2.DownloadChunk(offset=offset, data=data, size_bytes=total)


class DeviceService(_Servicer, device_pb2_grpc.DeviceServiceServicer):
    """Registration, check-in, telemetry and deployment reports."""

    @_unary(VEHICLE)
    def RegisterVehicle(self, request: Any, context: Any, identity: Any) -> Any:
        """Register the calling vehicle."""
        vin = vehicle_vin(identity, request.vin)
        vehicle = self.backend.register(
            vin=vin,
            model=request.model,
            tags=list(request.tags),
            ecus=[ecu(e) for e in request.ecus],
        )
        return vehicle_pb(vehicle)

    @_unary(VEHICLE)
    def CheckIn(self, request: Any, context: Any, identity: Any) -> Any:
        """Record a check-in and name the deployments to act on."""
        vin = vehicle_vin(identity, request.vin)
        offers = self.backend.check_in(
            vin=vin, state=request.state, ecus=[ecu(e) for e in request.ecus]
        )
        return device_pb2.CheckInResponse(
            deployments=[offer_pb(o) for o in offers],
            next_checkin_s=self.backend.limits.checkin_interval_s,
        )

    @_unary(VEHICLE)
    def ReportTelemetry(self, request: Any, context: Any, identity: Any) -> Any:
        """Store telemetry values."""
        vin = vehicle_vin(identity, request.vin)
        self.backend.telemetry(vin=vin, values=dict(request.values))
        return device_pb2.ReportTelemetryResponse()

    @_unary(VEHICLE)
    def ReportDeployment(self, request: Any, context: Any, identity: Any) -> Any:
        """Apply a deployment report (once per report_id)."""
        vin = vehicle_vin(identity, request.vin)
        outcome = self.backend.engine.report(
            DeploymentReport(
                vin=vin,
                deployment_id=request.deployment_id,
                report_id=request.report_id,
                state=action_state(request.state, "state"),
                progress_pct=request.progress_pct,
                failure_step=request.failure_step[:100],
                failure_reason=request.failure_reason[:2000],
                ecu_progress=tuple(
                    {
                        "ecu": p.ecu[:16],
                        "state": p.state[:32],
                        "step": p.step[:64],
                        "reason": p.reason[:500],
                        "from_version": p.from_version[:16],
                        "to_version": p.to_version[:16],
                    }
                    for p in request.ecus
                ),
                inventory=tuple(ecu(e) for e in request.inventory),
                detail=request.detail[:500],
            )
        )
        return device_pb2.ReportDeploymentResponse(
            state=action_state_pb(outcome.action.state), duplicate=outcome.duplicate
        )

    @_unary(EITHER)
    def GetVehicle(self, request: Any, context: Any, identity: Any) -> Any:
        """Return a vehicle (a vehicle may only read itself)."""
        vin = request.vin
        if identity is not None and identity.role == ROLE_VEHICLE:
            vin = vehicle_vin(identity, vin)
        return vehicle_pb(self.backend.get_vehicle(vin))

    @_unary(OPERATOR)
    def ListVehicles(self, request: Any, context: Any, _: Any) -> Any:
        """List vehicles matching a filter."""
        page = _page(request.page_size, request.page_token, self.backend)
        items = self.backend.list_vehicles(vehicle_filter(request.filter), page)
        return device_pb2.ListVehiclesResponse(
            vehicles=[vehicle_pb(v) for v in items],
            next_page_token=_next_token(items, page.limit, lambda v: v.vin),
        )


class CampaignService(_Servicer, campaign_pb2_grpc.CampaignServiceServicer):
    """Campaign operations and the campaign event stream."""

    watch_poll_s = 0.2

    def _status(self, campaign_id: str) -> campaign_pb2.Campaign:
        return campaign_pb(self.backend.engine.status(campaign_id))

    @_unary(OPERATOR)
    def CreateCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Create a draft campaign."""
        waves = [wave_spec(wave, index) for index, wave in enumerate(request.waves)]
        spec = CampaignSpec(
            name=request.name,
            release_id=request.release_id,
            filter=self._filter(request.filter),
            waves=tuple(waves),
            success_threshold_pct=(
                request.success_threshold_pct
                if request.HasField("success_threshold_pct")
                else DEFAULT_SUCCESS_THRESHOLD_PCT
            ),
            error_threshold_pct=(
                request.error_threshold_pct
                if request.HasField("error_threshold_pct")
                else DEFAULT_ERROR_THRESHOLD_PCT
            ),
            max_retries=request.max_retries,
            action_timeout_s=request.action_timeout_s,
            force=request.force,
            request_id=request.request_id[:100],
            rollout_rate=(
                rollout_rate(request.rollout_rate) if request.HasField("rollout_rate") else None
            ),
            abort_criteria=tuple(
                abort_criterion(c, index) for index, c in enumerate(request.abort_criteria)
            ),
        )
        campaign = self.backend.engine.create(spec)
        return self._status(campaign.campaign_id)

    @staticmethod
    def _filter(message: common_pb2.VehicleFilter) -> VehicleFilter:
        return check_filter(vehicle_filter(message))

    @_unary(OPERATOR)
    def StartCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Start a draft campaign."""
        self.backend.engine.start(request.campaign_id)
        return self._status(request.campaign_id)

    @_unary(OPERATOR)
    def PauseCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Pause a running campaign."""
        self.backend.engine.pause(request.campaign_id, request.reason[:500])
        return self._status(request.campaign_id)

    @_unary(OPERATOR)
    def ResumeCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Resume a paused campaign."""
        self.backend.engine.resume(request.campaign_id)
        return self._status(request.campaign_id)

    @_unary(OPERATOR)
    def AbortCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Abort a campaign."""
        self.backend.engine.abort(request.campaign_id, request.reason[:500])
        return self._status(request.campaign_id)

    @_unary(OPERATOR)
    def GetCampaign(self, request: Any, context: Any, _: Any) -> Any:
        """Return a campaign's status."""
        return self._status(request.campaign_id)

    @_unary(OPERATOR)
    def ListCampaigns(self, request: Any, context: Any, _: Any) -> Any:
        """List campaigns."""
        page = _page(request.page_size, request.page_token, self.backend)
        items = self.backend.list_campaigns(page)
        return campaign_pb2.ListCampaignsResponse(
            campaigns=[self._status(c.campaign_id) for c in items],
            next_page_token=_next_token(items, page.limit, lambda c: c.key),
        )

    @_unary(OPERATOR)
    def ListActions(self, request: Any, context: Any, _: Any) -> Any:
        """List a campaign's actions."""
        page = _page(request.page_size, request.page_token, self.backend)
        states = [action_state(s, "states[]") for s in request.states]
        items = self.backend.list_actions(request.campaign_id, states, page)
        return campaign_pb2.ListActionsResponse(
            actions=[action_pb(a) for a in items],
            next_page_token=_next_token(items, page.limit, lambda a: a.key),
        )

    @_streaming(OPERATOR)
    def WatchCampaign(self, request: Any, context: Any, _: Any) -> Iterator[Any]:
        """Stream a campaign's events until it has ended (or the caller leaves)."""
        after = request.after_event_id
        while context.is_active():
            campaign, events = self.backend.events(request.campaign_id, after_key=after)
            for event in events:
                yield event_pb(event)
                after = event.key
            if not events:
                if campaign.state in (CampaignState.COMPLETED, CampaignState.ABORTED):
                    return
                time.sleep(self.watch_poll_s)


def add_services(server: grpc.Server, backend: OtaBackend, *, tls: bool, metrics: Metrics) -> None:
    """Register the three OTA services on ``server``."""
    shared = _Shared(backend, Authorizer(tls=tls), metrics)
    update_pb2_grpc.add_UpdateServiceServicer_to_server(UpdateService(shared), server)  # type: ignore[no-untyped-call]
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceService(shared), server)  # type: ignore[no-untyped-call]
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(CampaignService(shared), server)  # type: ignore[no-untyped-call]


SERVICE_NAMES = (
    update_pb2.DESCRIPTOR.services_by_name["UpdateService"].full_name,
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
)
