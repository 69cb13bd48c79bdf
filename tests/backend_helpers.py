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
        for v in vehicles:
            tx.put_vehicle(v)
        return [tx.add_release(release(version=f"2.0.{i}")) for i in range(releases)]

    return store.run(work)
