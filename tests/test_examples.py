"""examples/: the example bench tests pass on the sim bench (through the pytest plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
def test_examples_pass_on_the_sim_bench(pytester: pytest.Pytester, monkeypatch, tmp_path):
    for name in ("HIL_BENCH", "HIL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for example in sorted(EXAMPLES.glob("test_*.py")):
        pytester.makepyfile(**{example.stem: example.read_text()})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--trace-dir={tmp_path}")
    result.assert_outcomes(passed=8)
    assert (tmp_path / "test_ecu_update.py_test_flash_a_new_version.blf").is_file()
