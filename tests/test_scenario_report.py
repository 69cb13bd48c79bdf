"""Scenario reports: report.json holds everything, report.html shows it with plots, escaped."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from pydantic import Field

from scenarios.core import EventLog, LogEntry, Scenario, ScenarioParams, Span, execute
from scenarios.report import MAX_LOG_ROWS, summary_lines, write_report

HOSTILE = "<script>alert('x')</script> & \"quotes\""


class RichParams(ScenarioParams):
    vehicles: int = Field(default=6, ge=1)
    extra_events: int = 0
    failing: bool = True


class Rich(Scenario):
    """A modeled campaign in miniature: waves, failures, spans, outcomes, an attachment."""

    name = "test-report-rich"
    summary = "test only: a small campaign with every kind of report data"
    fidelity = "modeled"
    Params = RichParams

    def main(self):
        run = self.run
        params = run.params
        trace = run.directory / "trace.asc"
        trace.write_text("date Mon Jan 1 00:00:00 2024\n", encoding="utf-8")
        run.attachments["CAN trace"] = "trace.asc"
        pending, running, succeeded, failed = params.vehicles, 0, 0, 0
        half = params.vehicles // 2 or 1
        for index in range(params.vehicles):
            if index % half == 0:
                run.event("campaign", "wave_started", f"wave {index // half + 1}")
            pending, running = pending - 1, running + 1
            run.sample(
                "campaign", pending=pending, in_progress=running, succeeded=succeeded, failed=failed
            )
            start = run.now
            yield run.env.timeout(0.5)
            ok = not (params.failing and index % 3 == 1)
            lane = f"VIN{index:03d}/ecm"
            run.spans.append(Span(lane, "erase", start, start + 0.2))
            run.spans.append(Span(lane, "transfer", start + 0.2, start + 0.5, ok=ok, detail="x"))
            running -= 1
            if ok:
                succeeded += 1
                run.event(f"VIN{index:03d}", "flashed", "ecm 2.0.0")
            else:
                failed += 1
                run.event(f"VIN{index:03d}", "flash_failed", HOSTILE)
            run.sample(
                "campaign", pending=pending, in_progress=running, succeeded=succeeded, failed=failed
            )
            run.outcomes.append({"vin": f"VIN{index:03d}", "ok": ok, "note": HOSTILE})
        run.event("test", "odd text", "tab\there\nnew line, é ✓ \x00 \\ \u2028")
        for number in range(params.extra_events):
            run.event("filler", "tick", str(number))
        run.figure("succeeded", succeeded)
        run.figure("rate", succeeded / params.vehicles)
        run.figure("worst", math.inf)
        run.check("some vehicles succeeded", succeeded > 0, f"{succeeded} of {params.vehicles}")
        run.check(f"no failures {HOSTILE}", failed == 0, f"{failed} failed")


class Bare(Scenario):
    """Nothing to plot: one check."""

    name = "test-report-bare"
    summary = "test only: one check, no data"
    fidelity = "modeled"

    def main(self):
        yield self.run.env.timeout(1)
        self.run.check("it ran", True)


def run_rich(tmp_path: Path, keep_log: bool = True, **values):
    return execute(
        Rich, RichParams(**values), seed=5, directory=tmp_path / "run", keep_log=keep_log
    )


def strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_json_holds_every_part_of_the_run(tmp_path):
    run = run_rich(tmp_path)
    files = write_report(run, run.directory)
    data = strict_json(files.json)
    assert data["scenario"] == "test-report-rich"
    assert data["fidelity"] == "modeled"
    assert data["seed"] == 5
    assert data["params"] == {"vehicles": 6, "extra_events": 0, "failing": True}
    assert data["passed"] is False
    assert data["error"] == ""
    assert data["wall_s"] == run.wall_s
    assert [c["name"] for c in data["checks"]] == [c.name for c in run.checks]
    assert [c["passed"] for c in data["checks"]] == [True, False]
    assert data["figures"] == {"succeeded": 4, "rate": 4 / 6, "worst": "inf"}
    assert data["series"]["campaign"] == run.series["campaign"]
    assert len(data["spans"]) == len(run.spans) == 12
    assert data["spans"][1] == {
        "lane": "VIN000/ecm",
        "step": "transfer",
        "start": 0.2,
        "end": 0.5,
        "ok": True,
        "detail": "x",
    }
    assert data["outcomes"] == run.outcomes
    assert data["attachments"] == {"CAN trace": "trace.asc"}


def test_json_log_has_every_entry_and_its_digest(tmp_path):
    run = run_rich(tmp_path, extra_events=3000)
    data = strict_json(write_report(run, tmp_path / "report").json)
    log = data["log"]
    assert log["kept"] is True
    assert log["count"] == run.log.count == len(log["entries"]) > 3000
    assert log["digest"] == f"sha256:{run.log.digest()}"
    # The entries are exactly what was fingerprinted: the digest can be recomputed from them.
    digest = hashlib.sha256()
    for entry in log["entries"]:
        digest.update(LogEntry(**entry).line().encode())
    assert log["digest"] == f"sha256:{digest.hexdigest()}"


def test_a_run_without_its_log_entries_keeps_count_and_digest(tmp_path):
    kept = run_rich(tmp_path / "kept")
    dropped = run_rich(tmp_path / "dropped", keep_log=False)
    files = write_report(dropped, tmp_path / "report")
    log = strict_json(files.json)["log"]
    assert log == {
        "count": kept.log.count,
        "digest": f"sha256:{kept.log.digest()}",
        "kept": False,
        "entries": [],
    }
    assert "kept only the count and the digest" in files.html.read_text(encoding="utf-8")


def test_rows_added_in_bulk_fingerprint_as_single_entries_do():
    # Enough rows to cross the bulk path's chunks, between single entries.
    rows = [(i / 7.0, "action", f"VIN{i} succeeded" if i % 3 else "") for i in range(9000)]
    expected = hashlib.sha256()
    lines = [LogEntry(0.5, "scenario", "started", "fleet").line()]
    lines += [LogEntry(at, "backend", kind, detail).line() for at, kind, detail in rows]
    lines.append(LogEntry(1e6 + 0.25, "scenario", "finished").line())
    expected.update("".join(lines).encode())
    for keep in (True, False):
        log = EventLog(keep=keep)
        log.add(0.5, "scenario", "started", "fleet")
        log.add_rows("backend", iter(rows))
        log.add(1e6 + 0.25, "scenario", "finished")
        assert log.count == len(lines)
        assert log.digest() == expected.hexdigest()
        assert len(log.entries) == (len(lines) if keep else 0)


def test_lines_added_whole_fingerprint_as_entries_do():
    entries = [LogEntry(i / 3.0, "backend", "action", f"VIN{i} pending") for i in range(5000)]
    kept = EventLog(keep=True)
    kept.add(0.5, "scenario", "started")
    for entry in entries:
        kept.add(entry.at, entry.source, entry.kind, entry.detail)
    dropped = EventLog(keep=False)
    dropped.add(0.5, "scenario", "started")
    dropped.add_lines([entry.line() for entry in entries[:4096]])
    dropped.add_lines([entry.line() for entry in entries[4096:]])
    assert (dropped.count, dropped.digest()) == (kept.count, kept.digest())
    with pytest.raises(ValueError, match="keeps its entries"):
        kept.add_lines([entries[0].line()])


def test_html_shows_checks_figures_plots_and_attachments(tmp_path):
    run = run_rich(tmp_path)
    files = write_report(run, run.directory)
    page = files.html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "FAILED" in page
    assert "some vehicles succeeded" in page
    assert "no failures &lt;script&gt;" in page
    assert re.search(r"<td class=\"fail\">FAIL</td>", page)
    assert "<td>rate</td>" in page and "0.666667" in page
    assert set(files.plots) == {
        "campaign progress by action state",
        "waves",
        "failures over time",
        "timeline of steps per vehicle and ECU",
    }
    assert page.count("<img ") == len(files.plots)
    assert page.count("src='data:image/png;base64,") == len(files.plots)
    assert "href='trace.asc'" in page
    assert run.log.digest() in page


def test_html_escapes_all_text(tmp_path):
    run = run_rich(tmp_path)
    page = write_report(run, run.directory).html.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page


def test_html_log_is_capped_and_says_how_much_was_left_out(tmp_path):
    run = run_rich(tmp_path, extra_events=5000)
    files = write_report(run, run.directory)
    page = files.html.read_text(encoding="utf-8")
    left_out = run.log.count - MAX_LOG_ROWS
    assert f"{left_out} in between are left out (report.json has all)" in page
    assert f"… {left_out} events left out …" in page
    # The first and the last events are there, one from the middle is not.
    assert "<td>scenario</td><td>started</td>" in page
    assert "<td>scenario</td><td>finished</td>" in page
    assert "<td>tick</td><td>2500</td>" not in page
    assert len(strict_json(files.json)["log"]["entries"]) == run.log.count


def test_plots_without_data_are_left_out(tmp_path):
    run = execute(Bare, Bare.Params(), seed=0, directory=tmp_path)
    files = write_report(run, tmp_path)
    assert files.plots == ()
    page = files.html.read_text(encoding="utf-8")
    assert "<img" not in page
    assert "PASSED" in page


def test_a_plot_that_cannot_be_drawn_costs_nothing_else(tmp_path):
    run = execute(Bare, Bare.Params(), seed=0, directory=tmp_path)
    run.series["campaign"] = [{"t": "soon", "pending": 3}]
    run.series["queue"] = [{"t": 0.0, "depth": 1}, {"t": 1.0, "depth": 4}]
    files = write_report(run, tmp_path)
    page = files.html.read_text(encoding="utf-8")
    assert "campaign progress by action state" not in files.plots
    assert "could not be drawn: ValueError" in page
    assert files.plots == ("series queue",)
    assert strict_json(files.json)["series"]["campaign"] == [{"t": "soon", "pending": 3}]


def test_waves_from_a_series_and_failures_from_campaign_counts(tmp_path):
    run = execute(Bare, Bare.Params(), seed=0, directory=tmp_path)
    run.series["waves"] = [{"t": 0.0, "wave": 1}, {"t": 5.0, "wave": 2}]
    run.series["campaign"] = [
        {"t": 0.0, "pending": 2, "failed": 0},
        {"t": 3.0, "pending": 1, "failed": 1},
    ]
    files = write_report(run, tmp_path)
    assert files.plots == ("campaign progress by action state", "waves", "failures over time")


def test_attachments_link_from_a_report_elsewhere(tmp_path):
    run = run_rich(tmp_path)
    page = write_report(run, tmp_path / "reports" / "one").html.read_text(encoding="utf-8")
    assert "href='../../run/trace.asc'" in page
    size = (run.directory / "trace.asc").stat().st_size
    assert f"(trace.asc, {size} bytes)" in page


def test_writing_twice_replaces_the_report(tmp_path):
    run = run_rich(tmp_path)
    first = write_report(run, run.directory)
    second = write_report(run, run.directory)
    assert first == second
    assert sorted(p.name for p in run.directory.iterdir()) == [
        "report.html",
        "report.json",
        "trace.asc",
    ]


def test_summary_lines(tmp_path):
    run = run_rich(tmp_path)
    lines = summary_lines(run)
    assert lines[0] == "scenario test-report-rich (modeled, seed 5): FAILED"
    assert "  checks: 1 of 2 held" in lines
    assert "    ok   some vehicles succeeded: 4 of 6" in lines
    assert any(line.startswith("    FAIL no failures") for line in lines)
    assert "    rate = 0.666667" in lines
    assert f"  log: {run.log.count} events, sha256:{run.log.digest()}" in lines


@pytest.mark.parametrize("vehicles", [1, 40])
def test_timeline_handles_few_and_many_lanes(tmp_path, vehicles):
    run = run_rich(tmp_path, vehicles=vehicles, failing=False)
    files = write_report(run, run.directory)
    assert "timeline of steps per vehicle and ECU" in files.plots


def test_dollar_signs_in_names_do_not_break_the_plots(tmp_path):
    run = execute(Bare, Bare.Params(), seed=0, directory=tmp_path)
    run.spans.append(Span("$VIN_1^$/ecm", "$erase^$", 0.0, 1.0, ok=False))
    run.log.add(0.5, "$VIN_1$", "flash failed $x^$", "detail")
    run.series["$cost^$"] = [{"t": 0.0, "$eur^$": 1.0}, {"t": 1.0, "$eur^$": 2.0}]
    files = write_report(run, tmp_path)
    assert files.plots == (
        "failures over time",
        "timeline of steps per vehicle and ECU",
        "series $cost^$",
    )
    assert "could not be drawn" not in files.html.read_text(encoding="utf-8")
