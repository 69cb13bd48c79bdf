"""Builders shared by the backend tests: vehicles, releases, fleets."""

from __future__ import annotations

from backend_stub.model import EcuInfo, Release, ReleaseImage, Vehicle

HARDWARE = {"ecm": "HW-ECM-1", "bms": "HW-BMS-1", "bcm": "HW-BCM-1"}


def vin(n: int) -> str:
    """A valid VIN numbered ``n``."""
    return f"WHLTST{n:011d}"


def vehicle(
    n: int,
    *,
    model: str = "demo",
    tags: tuple[str, ...] = (),
    ecm_hw: str = "HW-ECM-1",
    version: str = "1.0.0",
) -> Vehicle:
    ecus = tuple(
        EcuInfo(name=name, hardware_id=ecm_hw if name == "ecm" else hw, software_version=version)
        for name, hw in HARDWARE.items()
    )
    return Vehicle(vin=vin(n), model=model, tags=tags, ecus=ecus, registered_at=1.0)


def release(name: str = "r", version: str = "2.0.0") -> Release:
    images = tuple(
        ReleaseImage(
            ecu=ecu,
            sha256=f"{i:064x}",
            size_bytes=100,
            hardware_id=hw,
            compatible_hardware_ids=(hw,),
            version=version,
            anti_rollback=1,
        )
        for i, (ecu, hw) in enumerate(HARDWARE.items())
    )
    return Release(
        key=0,
        name=name,
        version=version,
        images=images,
        metadata=b"{}",
        signature=b"sig",
        signing_key_id="00",
        created_at=1.0,
    )


def seed(store, vehicles: list[Vehicle], *, releases: int = 1) -> list[Release]:
    """Register ``vehicles`` and add releases; return the stored releases."""

    def work(tx):
        tx.put_vehicles(vehicles)
        return [tx.add_release(release(version=f"2.0.{i}")) for i in range(releases)]

    return store.run(work)


# ------------------------------------------------------------ over gRPC
import hashlib  # noqa: E402
import uuid  # noqa: E402

import grpc  # noqa: E402

from backend_stub.api import (  # noqa: E402
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    device_pb2,
    device_pb2_grpc,
    update_pb2,
    update_pb2_grpc,
)

TIMEOUT = 10


class Client:
    """The three service stubs over one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.update = update_pb2_grpc.UpdateServiceStub(channel)
        self.device = device_pb2_grpc.DeviceServiceStub(channel)
        self.campaign = campaign_pb2_grpc.CampaignServiceStub(channel)

    def upload(self, data: bytes, *, chunk=7000, sha=None, size=None, filename="img.bin"):
        def messages():
            yield update_pb2.UploadArtifactRequest(
                header=update_pb2.ArtifactHeader(
                    size_bytes=len(data) if size is None else size,
                    sha256=sha or hashlib.sha256(data).hexdigest(),
                    filename=filename,
                )
            )
            for start in range(0, len(data), chunk):
                yield update_pb2.UploadArtifactRequest(data=data[start : start + chunk])

        return self.update.UploadArtifact(messages(), timeout=TIMEOUT)

    def register(self, vin_: str, *, model="demo", tags=(), ecus=None):
        ecus = ecus if ecus is not None else demo_ecus()
        return self.device.RegisterVehicle(
            device_pb2.RegisterVehicleRequest(vin=vin_, model=model, tags=list(tags), ecus=ecus),
            timeout=TIMEOUT,
        )

    def release(self, images, *, name="demo", version="2.0.0"):
        return self.update.CreateRelease(
            update_pb2.CreateReleaseRequest(
                name=name,
                version=version,
                images=[update_pb2.ReleaseImage(ecu=e, sha256=s) for e, s in images],
            ),
            timeout=TIMEOUT,
        )

    def campaign_create(self, release_id, name="c", **kw):
        return self.campaign.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(name=name, release_id=release_id, **kw),
            timeout=TIMEOUT,
        )

    def check_in(self, vin_: str):
        return self.device.CheckIn(device_pb2.CheckInRequest(vin=vin_), timeout=TIMEOUT)

    def report(self, vin_, dep, state, report_id=None, **kw):
        return self.device.ReportDeployment(
            device_pb2.ReportDeploymentRequest(
                vin=vin_,
                deployment_id=dep,
                report_id=uuid.uuid4().hex if report_id is None else report_id,
                state=common_pb2.ActionState.Value(f"ACTION_STATE_{state}"),
                **kw,
            ),
            timeout=TIMEOUT,
        )

    def download(self, sha, *, offset=0, vin_="", chunk_size=0):
        request = update_pb2.DownloadRequest(
            sha256=sha, offset=offset, vin=vin_, chunk_size=chunk_size
        )
        return self.update.Download(request, timeout=TIMEOUT)


def demo_ecus(ecm_hw: str | None = None):
    from ecu_sim import demo_vehicle

    spec = demo_vehicle()
    return [
        common_pb2.EcuInfo(
            name=e.name,
            hardware_id=(ecm_hw if (ecm_hw and e.name == "ecm") else e.hardware_id),
            software_version="1.0.0",
        )
        for e in spec.ecus
    ]


def code_of(call) -> grpc.StatusCode:
    """Run ``call`` and return the status code it fails with."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded")
