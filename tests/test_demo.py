"""``hil demo``: the whole OTA flow on the embedded defaults, judged by itself and here."""

from __future__ import annotations

import pytest

from hil.cli import main

pytestmark = pytest.mark.timeout(180)


def test_demo_runs_every_case_as_expected(capsys, tmp_path) -> None:
    assert main(["demo", "--quiet", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "every outcome as expected" in out
    # The campaigns as the backend reports them: one success, one rollback, one refusal.
    assert "succeeded" in out and "completed" in out
    assert "rolled back" in out
    assert "failed at verify image" in out
    # The data stayed where it was asked to: the backend's database and the gateway's state.
    assert (tmp_path / "backend" / "ota.sqlite3").is_file() or list(
        (tmp_path / "backend").glob("*.sqlite*")
    )
    assert list(tmp_path.glob("*/gateway/gateway.json"))
