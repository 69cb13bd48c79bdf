"""The OTA backend as plain Python: update, device and campaign management.

:class:`OtaBackend` is what the gRPC services call (and what a scenario in
virtual time may call directly). It validates every input, owns the artifact
files and the release key, and delegates campaign rules to the engine. It
knows nothing about gRPC or about who the caller is: authorisation is the
service layer's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backend_stub.artifacts import ArtifactStore, Incoming
from backend_stub.engine import CampaignEngine, Clock, Offer
from backend_stub.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
)
from backend_stub.model import (
    ACTIVE_ACTION_STATES,
    Action,
    ActionState,
    Artifact,
    Campaign,
    CampaignEvent,
    EcuInfo,
    Release,
    ReleaseImage,
    Vehicle,
    VehicleFilter,
    lookup_id,
)
from backend_stub.store.base import Store, Tx
from ota_formats import OtaFormatError, parse_image
from ota_formats.release import (
    ReleaseImageEntry,
    ReleaseManifest,
    is_sha256_hex,
    sign_manifest,
)
from ota_formats.signing import key_id
from ota_formats.vehicle import is_valid_ecu_name, is_valid_vin

_TEXT_LIMIT = 200


@dataclass(frozen=True)
class Limits:
    """Sizes the backend enforces."""

    max_artifact_bytes: int = 64 * 1024 * 1024
    download_chunk_bytes: int = 64 * 1024
    max_download_chunk_bytes: int = 1024 * 1024
    checkin_interval_s: int = 30
    max_page_size: int = 1000
    default_page_size: int = 100
    max_release_images: int = 32
    max_ecus: int = 64
    max_tags: int = 32
    max_telemetry_values: int = 256


@dataclass(frozen=True)
class UploadResult:
    """A stored artifact and whether an identical one had been stored before."""

    artifact: Artifact
    already_existed: bool


@dataclass(frozen=True)
class DeploymentView:
    """A vehicle's deployment with the release it installs."""

    action: Action
    campaign: Campaign
    release: Release


@dataclass
class Page:
    """How far a listing goes: a page size and the token of the previous page."""

    size: int = 0
    token: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def limit(self) -> int:
        """The number of items to return."""
        if self.size > self.limits.max_page_size:
            raise InvalidArgument(f"page_size must be at most {self.limits.max_page_size}")
        return self.size or self.limits.default_page_size

    def key(self) -> int:
        """Return the token as an integer key (0 for the first page)."""
        if not self.token:
            return 0
        if not self.token.isdigit() or len(self.token) > 18:
            raise InvalidArgument(f"page_token {self.token!r} is not one this backend issued")
        return int(self.token)


def check_vin(vin: str) -> str:
    """Return ``vin`` or raise :class:`InvalidArgument`."""
    if not vin:
        raise InvalidArgument("vin is required")
    if not is_valid_vin(vin):
        raise InvalidArgument(
            f"vin {vin!r} is not a VIN: 17 characters from 0-9 and A-Z without I, O and Q"
        )
    return vin


def check_sha256(text: str, what: str = "sha256") -> str:
    """Return ``text`` or raise :class:`InvalidArgument`."""
    if not is_sha256_hex(text):
        raise InvalidArgument(f"{what} must be 64 lowercase hex digits, got {text[:80]!r}")
    return text


def check_text(text: str, what: str, *, required: bool = False, limit: int = _TEXT_LIMIT) -> str:
    """Return ``text`` or raise :class:`InvalidArgument` (too long, control characters)."""
    if required and not text.strip():
        raise InvalidArgument(f"{what} is required")
    if len(text) > limit:
        raise InvalidArgument(f"{what} is longer than {limit} characters")
    if text and any(ord(ch) < 0x20 for ch in text):
        raise InvalidArgument(f"{what} contains control characters")
    return text


def check_ecus(ecus: Sequence[EcuInfo], limits: Limits) -> tuple[EcuInfo, ...]:
    """Validate an ECU inventory."""
    if len(ecus) > limits.max_ecus:
        raise InvalidArgument(f"at most {limits.max_ecus} ECUs, got {len(ecus)}")
    names = set()
    for index, ecu in enumerate(ecus):
        if not is_valid_ecu_name(ecu.name):
            raise InvalidArgument(
                f"ecus[{index}].name {ecu.name!r} must be 1-16 of a-z, 0-9, _ and -, "
                "starting with a letter"
            )
        if ecu.name in names:
            raise InvalidArgument(f"ecus[{index}].name {ecu.name!r} appears twice")
        names.add(ecu.name)
        for label in ("hardware_id", "part_number", "software_version", "serial_number"):
            check_text(getattr(ecu, label), f"ecus[{index}].{label}", limit=64)
    return tuple(ecus)


def check_filter(flt: VehicleFilter) -> VehicleFilter:
    """Validate a vehicle filter."""
    for vin in flt.vins:
        check_vin(vin)
    for label in ("model", "ecu_name", "hardware_id", "software_version"):
        check_text(getattr(flt, label), f"filter.{label}")
    for tag in flt.tags:
        check_text(tag, "filter.tags", required=True, limit=64)
    return flt.check()


class OtaBackend:
    """Update, device and campaign management over one store and artifact directory."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        *,
        release_key: Ed25519PrivateKey,
        image_trust_anchors: Iterable[Ed25519PublicKey],
        clock: Clock,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.release_key = release_key
        self.release_key_id = key_id(release_key.public_key()).hex()
        self.image_trust_anchors = list(image_trust_anchors)
        self.clock = clock
        self.limits = limits or Limits()
        self.engine = CampaignEngine(store, clock)

    # ------------------------------------------------------- update management
    def receive_artifact(
        self, *, size_bytes: int, sha256: str, filename: str, chunks: Iterator[bytes]
    ) -> UploadResult:
        """Store one signed image from ``chunks``; check size, digest and signature."""
        check_sha256(sha256, "header.sha256")
        check_text(filename, "header.filename", limit=255)
        if size_bytes <= 0:
            raise InvalidArgument("header.size_bytes must be positive")
        if size_bytes > self.limits.max_artifact_bytes:
            raise InvalidArgument(
                f"header.size_bytes {size_bytes} exceeds the limit of "
                f"{self.limits.max_artifact_bytes} bytes"
            )
        incoming = self.artifacts.receive(max_bytes=min(size_bytes, self.limits.max_artifact_bytes))
        try:
            for chunk in chunks:
                incoming.write(chunk)
            return self._accept(incoming, size_bytes=size_bytes, sha256=sha256, filename=filename)
        finally:
            incoming.discard()

    def _accept(
        self, incoming: Incoming, *, size_bytes: int, sha256: str, filename: str
    ) -> UploadResult:
        if incoming.size_bytes != size_bytes:
            raise InvalidArgument(
                f"received {incoming.size_bytes} bytes, the header announced {size_bytes}"
            )
        if incoming.sha256 != sha256:
            raise InvalidArgument(
                f"the data has SHA-256 {incoming.sha256}, the header announced {sha256}"
            )
        existing = self.store.run(lambda tx: tx.get_artifact(sha256), write=False)
        if existing is not None and self.artifacts.exists(sha256):
            return UploadResult(existing, already_existed=True)
        data = incoming.read_back()
        try:
            image = parse_image(data)
            image.check_integrity()
            image.check_signature(self.image_trust_anchors)
        except OtaFormatError as exc:
            raise InvalidArgument(f"not an acceptable signed image: {exc}") from exc
        incoming.commit()
        artifact = Artifact(
            sha256=sha256,
            size_bytes=size_bytes,
            hardware_id=image.header.hardware_id,
            version=image.header.version,
            anti_rollback=image.header.anti_rollback_counter,
            signing_key_id=image.header.key_id.hex(),
            created_at=self.clock(),
            filename=filename,
        )

        def work(tx: Tx) -> UploadResult:
            if tx.add_artifact(artifact):
                return UploadResult(artifact, already_existed=False)
            stored = tx.get_artifact(sha256)
            assert stored is not None
            return UploadResult(stored, already_existed=True)

        return self.store.run(work)

    def get_artifact(self, sha256: str) -> Artifact:
        """Return an artifact's record."""
        check_sha256(sha256)
        artifact = self.store.run(lambda tx: tx.get_artifact(sha256), write=False)
        if artifact is None:
            raise NotFound(f"artifact {sha256} does not exist")
        return artifact

    def list_artifacts(self, page: Page) -> list[Artifact]:
        """List artifacts in digest order after the page token."""
        if page.token:
            check_sha256(page.token, "page_token")
        limit = page.limit
        return self.store.run(
            lambda tx: tx.list_artifacts(after=page.token, limit=limit), write=False
        )

    def create_release(
        self,
        *,
        name: str,
        version: str,
        images: Sequence[tuple[str, str, Sequence[str]]],
        request_id: str = "",
    ) -> Release:
        """Create and sign a release from ``(ecu, sha256, compatible_hardware_ids)`` entries."""
        check_text(name, "name", required=True)
        check_text(version, "version", required=True, limit=64)
        check_text(request_id, "request_id", limit=100)
        if not images:
            raise InvalidArgument("a release needs at least one image")
        if len(images) > self.limits.max_release_images:
            raise InvalidArgument(f"at most {self.limits.max_release_images} images per release")
        seen: set[str] = set()
        for index, (ecu, sha256, compatible) in enumerate(images):
            if not is_valid_ecu_name(ecu):
                raise InvalidArgument(f"images[{index}].ecu {ecu!r} is not an ECU name")
            if ecu in seen:
                raise InvalidArgument(f"images[{index}].ecu {ecu!r} appears twice")
            seen.add(ecu)
            check_sha256(sha256, f"images[{index}].sha256")
            for hardware in compatible:
                check_text(hardware, f"images[{index}].compatible_hardware_ids", required=True)

        def work(tx: Tx) -> Release:
            if request_id:
                earlier = tx.release_by_request(request_id)
                if earlier is not None:
                    return earlier
            if tx.find_release(name=name, version=version) is not None:
                raise AlreadyExists(f"release {name!r} version {version!r} exists already")
            entries = []
            for index, (ecu, sha256, compatible) in enumerate(images):
                artifact = tx.get_artifact(sha256)
                if artifact is None:
                    raise NotFound(f"images[{index}]: artifact {sha256} has not been uploaded")
                hardware = tuple(compatible) or (artifact.hardware_id,)
                if artifact.hardware_id not in hardware:
                    raise InvalidArgument(
                        f"images[{index}]: the image is built for {artifact.hardware_id!r}, "
                        f"which compatible_hardware_ids {list(hardware)} leaves out"
                    )
                entries.append(
                    ReleaseImage(
                        ecu=ecu,
                        sha256=sha256,
                        size_bytes=artifact.size_bytes,
                        hardware_id=artifact.hardware_id,
                        compatible_hardware_ids=hardware,
                        version=artifact.version,
                        anti_rollback=artifact.anti_rollback,
                    )
                )
            now = self.clock()
            release = tx.add_release(
                Release(
                    key=0,
                    name=name,
                    version=version,
                    images=tuple(entries),
                    metadata=b"",
                    signature=b"",
                    signing_key_id=self.release_key_id,
                    created_at=now,
                    request_id=request_id,
                )
            )
            manifest = ReleaseManifest(
                release_id=release.release_id,
                name=name,
                version=version,
                created_at_s=math.floor(now),
                images=tuple(
                    ReleaseImageEntry(
                        ecu=e.ecu,
                        sha256=e.sha256,
                        size_bytes=e.size_bytes,
                        hardware_id=e.hardware_id,
                        compatible_hardware_ids=e.compatible_hardware_ids,
                        version=e.version,
                        anti_rollback=e.anti_rollback,
                    )
                    for e in entries
                ),
            )
            metadata, signature = sign_manifest(manifest, self.release_key)
            tx.sign_release(release.key, metadata=metadata, signature=signature)
            signed = tx.get_release(release.key)
            assert signed is not None
            return signed

        return self.store.run(work)

    def get_release(self, release_id: str) -> Release:
        """Return a release."""
        key = lookup_id("rel", release_id, "release_id")
        release = self.store.run(lambda tx: tx.get_release(key), write=False)
        if release is None:
            raise NotFound(f"release {release_id} does not exist")
        return release

    def list_releases(self, page: Page) -> list[Release]:
        """List releases in creation order after the page token."""
        after, limit = page.key(), page.limit
        return self.store.run(
            lambda tx: tx.list_releases(after_key=after, limit=limit), write=False
        )

    def deployment(self, vin: str, deployment_id: str) -> DeploymentView:
        """Return one of the vehicle's deployments with its release."""
        check_vin(vin)
        action, campaign = self.engine.deployment(vin, deployment_id)
        return DeploymentView(action, campaign, self.get_release(campaign.release_id))

    def may_download(self, vin: str, sha256: str) -> bool:
        """Whether ``vin`` has a deployment in progress whose release contains ``sha256``."""

        def work(tx: Tx) -> bool:
            for action in tx.actions_of_vehicle(vin, ACTIVE_ACTION_STATES):
                campaign = tx.get_campaign(action.campaign_key)
                release = None if campaign is None else tx.get_release(campaign.release_key)
                if release is not None and any(i.sha256 == sha256 for i in release.images):
                    return True
            return False

        return self.store.run(work, write=False)

    def download(
        self, sha256: str, *, offset: int, chunk_size: int, vin: str | None
    ) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(offset, data, total size)`` of an artifact from ``offset`` on.

        ``vin`` is the downloading vehicle (``None`` for an operator); a vehicle
        may only fetch artifacts of its own deployments in progress.
        """
        check_sha256(sha256)
        if chunk_size < 0 or chunk_size > self.limits.max_download_chunk_bytes:
            raise InvalidArgument(
                f"chunk_size must be at most {self.limits.max_download_chunk_bytes}"
            )
        artifact = self.store.run(lambda tx: tx.get_artifact(sha256), write=False)
        if vin is not None:
            check_vin(vin)
            if artifact is None or not self.may_download(vin, sha256):
                raise PermissionDenied(
                    f"artifact {sha256} is not part of a deployment in progress for {vin}"
                )
        if artifact is None:
            raise NotFound(f"artifact {sha256} does not exist")
        if offset < 0 or offset > artifact.size_bytes:
            raise OutOfRange(
                f"offset {offset} lies beyond the artifact's {artifact.size_bytes} bytes"
            )
        size = chunk_size or self.limits.download_chunk_bytes
        return self._chunks(sha256, offset, size, artifact.size_bytes)

    def _chunks(
        self, sha256: str, offset: int, size: int, total: int
    ) -> Iterator[tuple[int, bytes, int]]:
        with self.artifacts.open(sha256) as handle:
            handle.seek(offset)
            position = offset
            while position < total:
                data = handle.read(min(size, total - position))
                if not data:
                    break
                yield position, data, total
                position += len(data)

    # ------------------------------------------------------- device management
    def register(
        self, *, vin: str, model: str, tags: Sequence[str], ecus: Sequence[EcuInfo]
    ) -> Vehicle:
        """Register a vehicle or update its registration (keeps its history)."""
        check_vin(vin)
        check_text(model, "model")
        if len(tags) > self.limits.max_tags:
            raise InvalidArgument(f"at most {self.limits.max_tags} tags")
        for tag in tags:
            check_text(tag, "tags", required=True, limit=64)
        inventory = check_ecus(ecus, self.limits)

        def work(tx: Tx) -> Vehicle:
            now = self.clock()
            old = tx.get_vehicle(vin)
            vehicle = Vehicle(
                vin=vin,
                model=model,
                tags=tuple(dict.fromkeys(tags)),
                ecus=inventory,
                state=old.state if old else "registered",
                registered_at=old.registered_at if old else now,
                last_seen_at=now,
                checkins=old.checkins if old else 0,
                telemetry=old.telemetry if old else {},
            )
            tx.put_vehicle(vehicle)
            return vehicle

        return self.store.run(work)

    def check_in(self, *, vin: str, state: str, ecus: Sequence[EcuInfo]) -> list[Offer]:
        """Record a check-in; return the deployments the vehicle should act on."""
        check_vin(vin)
        check_text(state, "state", limit=100)
        inventory = check_ecus(ecus, self.limits) if ecus else None
        return self.engine.check_in(vin, state=state or None, ecus=inventory)

    def telemetry(self, *, vin: str, values: Mapping[str, float]) -> None:
        """Store the latest telemetry values of a vehicle."""
        check_vin(vin)
        if len(values) > self.limits.max_telemetry_values:
            raise InvalidArgument(f"at most {self.limits.max_telemetry_values} values per report")
        for name, value in values.items():
            check_text(name, "values key", required=True, limit=64)
            if not math.isfinite(value):
                raise InvalidArgument(f"values[{name!r}] is not a finite number")
        now = self.clock()
        if not self.store.run(lambda tx: tx.set_telemetry(vin, values, now)):
            raise NotFound(f"vehicle {vin} is not registered; register it first")

    def get_vehicle(self, vin: str) -> Vehicle:
        """Return a vehicle."""
        check_vin(vin)
        vehicle = self.store.run(lambda tx: tx.get_vehicle(vin), write=False)
        if vehicle is None:
            raise NotFound(f"vehicle {vin} is not registered")
        return vehicle

    def list_vehicles(self, flt: VehicleFilter, page: Page) -> list[Vehicle]:
        """List vehicles matching ``flt`` in VIN order after the page token."""
        check_filter(flt)
        if page.token:
            check_vin(page.token)
        limit = page.limit
        return self.store.run(
            lambda tx: tx.find_vehicles(flt, after_vin=page.token, limit=limit), write=False
        )

    # ----------------------------------------------------- campaign management
    def list_campaigns(self, page: Page) -> list[Campaign]:
        """List campaigns in creation order after the page token."""
        after, limit = page.key(), page.limit
        return self.store.run(
            lambda tx: tx.list_campaigns(after_key=after, limit=limit), write=False
        )

    def list_actions(
        self, campaign_id: str, states: Sequence[ActionState], page: Page
    ) -> list[Action]:
        """List a campaign's actions after the page token."""
        key = lookup_id("cmp", campaign_id, "campaign_id")
        after, limit = page.key(), page.limit
        wanted = tuple(states)

        def work(tx: Tx) -> list[Action]:
            if tx.get_campaign(key) is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            return tx.list_actions(key, states=wanted, after_key=after, limit=limit)

        return self.store.run(work, write=False)

    def events(
        self, campaign_id: str, *, after_key: int, limit: int = 500
    ) -> tuple[Campaign, list[CampaignEvent]]:
        """Return a campaign and its events after ``after_key`` (one consistent read)."""
        key = lookup_id("cmp", campaign_id, "campaign_id")

        def work(tx: Tx) -> tuple[Campaign, list[CampaignEvent]]:
            campaign = tx.get_campaign(key)
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            return campaign, tx.events_after(key, after_key=after_key, limit=limit)

        return self.store.run(work, write=False)


__all__ = [
    "DeploymentView",
    "Limits",
    "OtaBackend",
    "Page",
    "UploadResult",
]
