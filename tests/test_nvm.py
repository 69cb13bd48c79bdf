"""NVM records: atomic replacement, survival of a kill at any moment, refusal of garbage."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from ecu_sim.errors import NvmError
from ecu_sim.nvm import BankRecord, Nvm, NvmRecord

WRITER = """
import sys
from ecu_sim.nvm import Nvm, NvmRecord, BankRecord
nvm = Nvm(sys.argv[1])
n = 0
print("ready", flush=True)
while True:
    n += 1
    nvm.save(NvmRecord(
        banks=[BankRecord(state="valid", version=str(n), sha256="ab" * 32), BankRecord()],
        active_bank=n % 2, boot_count=n, dtcs={n: 0x2F}, dids={0xF190: "00" * 17 * (n % 50)},
    ))
"""


def test_round_trip(tmp_path):
    nvm = Nvm(tmp_path)
    assert nvm.load() is None
    record = NvmRecord(
        banks=[BankRecord(state="valid", version="1.0.0", size_bytes=3, sha256="00"), BankRecord()],
        active_bank=0,
        pending_bank=1,
        dtcs={0xF00096: 0x2F},
        dids={0xF190: "4142"},
        security_lockout=True,
    )
    nvm.save(record)
    assert Nvm(tmp_path).load() == record


def test_record_without_the_confirmed_flag_reads_as_confirmed(tmp_path):
    import json

    nvm = Nvm(tmp_path)
    nvm.save(NvmRecord(confirmed=False, anti_rollback_counter=3))
    assert Nvm(tmp_path).load().confirmed is False
    # A record written before the flag existed: its counter was raised at boot.
    data = json.loads((tmp_path / "nvm.json").read_text())
    del data["confirmed"]
    (tmp_path / "nvm.json").write_text(json.dumps(data))
    loaded = Nvm(tmp_path).load()
    assert (loaded.confirmed, loaded.anti_rollback_counter) == (True, 3)


def test_garbage_record_is_an_error(tmp_path):
    (tmp_path / "nvm.json").write_text("{not json")
    with pytest.raises(NvmError, match="not a valid NVM record"):
        Nvm(tmp_path).load()


def test_leftover_temporary_file_is_ignored(tmp_path):
    nvm = Nvm(tmp_path)
    nvm.save(NvmRecord(boot_count=7))
    (tmp_path / "nvm.json.tmp999").write_text('{"torn": ')
    assert Nvm(tmp_path).load().boot_count == 7
    assert not (tmp_path / "nvm.json.tmp999").exists()


def test_kill_at_random_moments_never_leaves_a_torn_record(tmp_path):
    rng = random.Random(1234)
    last = 0
    for _ in range(15):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process.stdout.close()
        record = Nvm(tmp_path).load()
        assert record is not None
        assert record.banks[0].version == str(record.boot_count)
        assert record.dtcs == {record.boot_count: 0x2F}
        assert record.active_bank == record.boot_count % 2
        last = record.boot_count
    assert last > 0
