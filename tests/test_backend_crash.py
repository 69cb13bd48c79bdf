"""SIGKILL the backend again and again during a running campaign: nothing lost, nothing twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from backend_helpers import Client, demo_ecus
from helpers import make_image

from backend_stub.api import campaign_pb2, common_pb2, device_pb2, update_pb2

pytestmark = pytest.mark.slow

FLEET = 20
RETRIED = {0, 5, 10, 15}  # fail their first attempt, then succeed
DOOMED = 7  # fails both attempts
CALL_S = 5.0
MAX_KILLS = 10


def vin_of(index: int) -> str:
    return f"WHLCRS{index:011d}"


class Backend:
    """``hil backend serve`` in a child process that the test kills and restarts."""

    def __init__(self, data_dir, db_url) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.kills = 0

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "hil",
            "backend",
            "serve",
            "--insecure",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
        ]
        if self.db_url:
            args += ["--db", self.db_url]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("backend listening on "), line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def call(fn, request, stop: threading.Event):
    """Call until the backend answers (it may be down or restarting); return its reply."""
    while not stop.is_set():
        try:
            return fn(request, timeout=CALL_S, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.CANCELLED,
            ):
                time.sleep(0.05)
                continue
            raise
    raise TimeoutError("stopped")


class Vehicle:
    def __init__(self, index: int, client: Client) -> None:
        self.index = index
        self.vin = vin_of(index)
        self.client = client
        self.acked_reports: dict[str, int] = {}
        self.attempts_seen: list[int] = []
        self.done = False

    def outcome(self, attempt: int) -> str:
        if self.index == DOOMED:
            return "FAILED"
        if self.index in RETRIED and attempt == 1:
            return "ROLLED_BACK"
        return "SUCCEEDED"

    def step(self, stop: threading.Event) -> None:
        reply = call(self.client.device.CheckIn, device_pb2.CheckInRequest(vin=self.vin), stop)
        if not reply.deployments:
            return
        notice = reply.deployments[0]
        deployment = call(
            self.client.update.GetDeployment,
            update_pb2.GetDeploymentRequest(vin=self.vin, deployment_id=notice.deployment_id),
            stop,
        )
        attempt = deployment.attempt
        self.attempts_seen.append(attempt)
        for state in ("DOWNLOADING", "INSTALLING", self.outcome(attempt)):
            report_id = f"{self.vin}-{attempt}-{state}"
            request = device_pb2.ReportDeploymentRequest(
                vin=self.vin,
                deployment_id=notice.deployment_id,
                report_id=report_id,
                state=common_pb2.ActionState.Value(f"ACTION_STATE_{state}"),
                failure_step="boot" if state != "SUCCEEDED" else "",
            )
            answer = call(self.client.device.ReportDeployment, request, stop)
            self.acked_reports[report_id] = answer.state
            time.sleep(0.1)  # downloading and flashing take time: kills land mid-update
        final = self.acked_reports[f"{self.vin}-{attempt}-{self.outcome(attempt)}"]
        if final != common_pb2.ACTION_STATE_PENDING:  # no retry left
            self.done = True


def test_sigkill_during_a_campaign_loses_and_duplicates_nothing(tmp_path, backend_db, demo):
    backend = Backend(tmp_path / "data", backend_db)
    backend.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{backend.port}")
    client = Client(channel)
    stop = threading.Event()
    try:
        image = make_image(demo.ecu("ecm"), "2.0.0", 2, size=30_000)
        artifact = client.upload(image)
        release = client.release([("ecm", artifact.sha256)])
        for index in range(FLEET):
            client.register(vin_of(index), ecus=demo_ecus())
        created = client.campaign_create(
            release.release_id,
            waves=[campaign_pb2.WaveSpec(count=5), campaign_pb2.WaveSpec(count=5)],
            success_threshold_pct=80,
            error_threshold_pct=50,
            max_retries=1,
        )
        cid = created.campaign_id
        client.campaign.StartCampaign(campaign_pb2.CampaignRequest(campaign_id=cid), timeout=CALL_S)
        vehicles = [Vehicle(i, client) for i in range(FLEET)]

        def drive(group):
            while not stop.is_set() and not all(v.done for v in group):
                for vehicle in group:
                    if not vehicle.done:
                        vehicle.step(stop)
                time.sleep(0.01)

        drivers = [
            threading.Thread(target=drive, args=(vehicles[i::4],), daemon=True) for i in range(4)
        ]
        for driver in drivers:
            driver.start()
        rng = random.Random(1234)
        deadline = time.monotonic() + 120
        while any(d.is_alive() for d in drivers) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.4))
            if backend.kills < MAX_KILLS and any(d.is_alive() for d in drivers):
                backend.kill()
                backend.start()
        stop.set()
        for driver in drivers:
            driver.join(10)
        assert all(v.done for v in vehicles), "the campaign did not finish in time"
        assert backend.kills >= 4, f"only {backend.kills} kill(s) landed during the campaign"
        print(f"{backend.kills} SIGKILLs during the campaign")

        status = client.campaign.GetCampaign(
            campaign_pb2.CampaignRequest(campaign_id=cid), timeout=CALL_S
        )
        assert status.state == common_pb2.CAMPAIGN_STATE_COMPLETED
        counts = {c.state: c.count for c in status.counts}
        assert counts == {
            common_pb2.ACTION_STATE_SUCCEEDED: FLEET - 1,
            common_pb2.ACTION_STATE_FAILED: 1,
        }
        actions = client.campaign.ListActions(
            campaign_pb2.ListActionsRequest(campaign_id=cid, page_size=100), timeout=CALL_S
        ).actions
        attempts = {a.vin: a.attempts for a in actions}
        for vehicle in vehicles:
            expected = 2 if vehicle.index in RETRIED | {DOOMED} else 1
            assert attempts[vehicle.vin] == expected, vehicle.vin
        # Every acknowledged report left exactly one trace: one event per state change.
        events = list(
            client.campaign.WatchCampaign(
                campaign_pb2.WatchCampaignRequest(campaign_id=cid), timeout=CALL_S
            )
        )
        per_vin: dict[tuple[str, int], int] = {}
        for event in events:
            if event.kind == "action":
                key = (event.vin, event.action_state)
                per_vin[key] = per_vin.get(key, 0) + 1
        for vehicle in vehicles:
            failures = per_vin.get((vehicle.vin, common_pb2.ACTION_STATE_ROLLED_BACK), 0)
            failures += per_vin.get((vehicle.vin, common_pb2.ACTION_STATE_FAILED), 0)
            expected_failures = {DOOMED: 2}.get(vehicle.index, 1 if vehicle.index in RETRIED else 0)
            assert failures == expected_failures, vehicle.vin
            successes = per_vin.get((vehicle.vin, common_pb2.ACTION_STATE_SUCCEEDED), 0)
            assert successes == (0 if vehicle.index == DOOMED else 1), vehicle.vin
            notified = per_vin.get((vehicle.vin, common_pb2.ACTION_STATE_NOTIFIED), 0)
            assert notified == attempts[vehicle.vin], vehicle.vin
        assert [e.event_id for e in events] == sorted(set(e.event_id for e in events))
        # The upload and the registrations accepted before the first kill are all there.
        assert client.update.GetArtifact(
            update_pb2.GetArtifactRequest(sha256=artifact.sha256), timeout=CALL_S
        ).size_bytes == len(image)
        listed = client.device.ListVehicles(
            device_pb2.ListVehiclesRequest(page_size=100), timeout=CALL_S
        ).vehicles
        assert sorted(v.vin for v in listed) == sorted(vin_of(i) for i in range(FLEET))
    finally:
        stop.set()
        channel.close()
        backend.stop()
