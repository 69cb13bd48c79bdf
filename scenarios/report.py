"""Reports of a finished scenario run: ``report.json`` with everything, ``report.html`` to read.

``report.json`` holds the run's identity (scenario, fidelity, seed, parameters),
its verdict, checks, figures, time series, spans, per-vehicle outcomes,
attachments and every event of the log, together with the log's count and
SHA-256 (``sha256:<hex>``, over the canonical lines of
:meth:`~scenarios.core.LogEntry.line`). The log is written entry by entry, so a
large run never builds the document as one string.

``report.html`` is one self-contained page: a summary, the checks, the figures,
plots drawn with matplotlib's Agg backend and embedded as PNG, links to the
attachments (CAN traces and the like), the outcomes and the event log (the
first and last rows of a long log; the JSON has all of it).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel

from scenarios.core import LogEntry, Run

REPORT_FORMAT = 1
"""Version of the layout of ``report.json``; raised when a key changes meaning."""

MAX_LOG_ROWS = 2000
"""Rows of the event log the HTML page shows (first half and last half of a longer log)."""

MAX_OUTCOME_ROWS = 2000
MAX_TIMELINE_LANES = 60
MAX_LINES_PER_PLOT = 10
_PLOT_DPI = 100
# Log entry kinds and campaign action states that count as failures in the
# "failures over time" plot: a rolled-back vehicle is an update that failed.
_FAILURE_WORDS = ("fail", "error", "timeout", "abort", "rolled_back", "rolled back", "rollback")
_WAVE_STARTED = "wave_started"


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote, and the titles of the plots drawn."""

    json: Path
    html: Path
    plots: tuple[str, ...] = ()


def log_digest(run: Run) -> str:
    """Return the run's log fingerprint as ``sha256:<hex>``."""
    return f"sha256:{run.log.digest()}"


def write_report(run: Run, directory: Path) -> ReportFiles:
    """Write ``report.json`` and ``report.html`` of ``run`` into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "report.json"
    html_path = directory / "report.html"
    _write_atomically(json_path, lambda out: _write_json(run, out))
    plots = _draw_plots(run)
    _write_atomically(html_path, lambda out: _write_html(run, directory, plots, out))
    return ReportFiles(json_path, html_path, tuple(title for title, _png, _note in plots if _png))


def summary_lines(run: Run) -> list[str]:
    """Return a plain-text summary of ``run`` for a terminal: verdict, checks, figures, log."""
    verdict = "PASSED" if run.passed else "FAILED"
    lines = [f"scenario {run.name} ({run.fidelity}, seed {run.seed}): {verdict}"]
    if run.error:
        lines.append(f"  error: {run.error}")
    held = sum(1 for check in run.checks if check.passed)
    lines.append(f"  checks: {held} of {len(run.checks)} held")
    for check in run.checks:
        mark = "ok  " if check.passed else "FAIL"
        detail = f": {check.detail}" if check.detail else ""
        lines.append(f"    {mark} {check.name}{detail}")
    if run.figures:
        lines.append("  figures:")
        for name, value in run.figures.items():
            lines.append(f"    {name} = {format_value(value)}")
    lines.append(f"  log: {run.log.count} events, {log_digest(run)}")
    lines.append(f"  time: {run.now:.3f} s scenario time, {run.wall_s:.2f} s wall")
    return lines


def format_value(value: Any) -> str:
    """Return a figure's value as short text (floats to 6 significant digits)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int | str):
        return str(value)
    text = json.dumps(jsonable(value), separators=(", ", ": "))
    return text if len(text) <= 200 else text[:197] + "..."


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data (non-finite floats become strings like ``"inf"``)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # Strict JSON has no NaN or Infinity, and other tools refuse them.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ---------------------------------------------------------------------- JSON


def _write_atomically(path: Path, write: Callable[[TextIO], None]) -> None:
    # A reader (a CI job collecting reports) never sees half a report.
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            write(out)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


# One encoder for the whole report: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(jsonable(value))


def _write_array(
    out: TextIO, items: Iterable[Any], indent: str, dumps: Callable[[Any], str] = _dumps
) -> None:
    """Write a JSON array one item per line, without building it in memory."""
    out.write("[")
    first = True
    for item in items:
        out.write(("\n" if first else ",\n") + indent + "  " + dumps(item))
        first = False
    out.write("]" if first else "\n" + indent + "]")


def _entry_json(entry: LogEntry) -> str:
    # A log may be millions of entries long: build each line directly, three times
    # faster than encoding a dict, and the same text.
    if not math.isfinite(entry.at):
        return _dumps(dataclasses.asdict(entry))
    return (
        f'{{"at": {entry.at!r}, "source": {encode_basestring(entry.source)}, '
        f'"kind": {encode_basestring(entry.kind)}, "detail": {encode_basestring(entry.detail)}}}'
    )


def _write_json(run: Run, out: TextIO) -> None:
    head: dict[str, Any] = {
        "report_format": REPORT_FORMAT,
        "scenario": run.name,
        "fidelity": run.fidelity,
        "seed": run.seed,
        "params": run.params.model_dump(mode="json"),
        "passed": run.passed,
        "error": run.error,
        "wall_s": run.wall_s,
        "scenario_time_s": run.now,
        "checks": [dataclasses.asdict(check) for check in run.checks],
        "figures": run.figures,
        "series": run.series,
        "attachments": run.attachments,
    }
    out.write("{\n")
    for key, value in head.items():
        out.write(f"  {json.dumps(key)}: {_dumps(value)},\n")
    out.write('  "spans": ')
    _write_array(out, (dataclasses.asdict(span) for span in run.spans), "  ")
    out.write(',\n  "outcomes": ')
    _write_array(out, run.outcomes, "  ")
    # The log goes last: it is by far the largest part, and the rest reads first.
    log = {"count": run.log.count, "digest": log_digest(run), "kept": run.log.keep}
    out.write(',\n  "log": {\n')
    for key, value in log.items():
        out.write(f"    {json.dumps(key)}: {_dumps(value)},\n")
    out.write('    "entries": ')
    _write_array(out, run.log.entries, "    ", _entry_json)
    out.write("\n  }\n}\n")


# --------------------------------------------------------------------- plots

# (title, PNG bytes or None, a note shown instead of or under the plot)
_Plot = tuple[str, bytes | None, str]


def _draw_plots(run: Run) -> list[_Plot]:
    drawers: list[tuple[str, Callable[[Run], Figure | None]]] = [
        ("campaign progress by action state", _plot_campaign),
        ("waves", _plot_waves),
        ("failures over time", _plot_failures),
        ("timeline of steps per vehicle and ECU", _plot_timeline),
    ]
    plots: list[_Plot] = []
    for title, draw in drawers:
        plots.append(_render(title, partial(draw, run)))
    for name in run.series:
        if name not in ("campaign", "waves", "failures"):
            plots.append(_render(f"series {name}", partial(_plot_series, run, name, name)))
    # A plot without data is left out altogether; one that could not be drawn says why.
    return [plot for plot in plots if plot[1] is not None or plot[2]]


def _render(title: str, draw: Callable[[], Figure | None]) -> _Plot:
    # Series and spans are free-form data of user scenarios: a plot that cannot be
    # drawn from them must not cost the rest of the report.
    try:
        figure = draw()
        if figure is None:
            return (title, None, "")
        return (title, _png(figure), "")
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        return (title, None, f"could not be drawn: {type(exc).__name__}: {exc}")


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PLOT_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _new_figure(height_in: float = 3.6) -> tuple[Figure, Any]:
    figure = Figure(figsize=(9.0, height_in))
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    axes.set_xlabel("scenario time (s)")
    return figure, axes


def _text(text: str | None) -> str | None:
    """Return scenario-made text for a plot, its ``$`` kept from starting mathtext."""
    return None if text is None else text.replace("$", r"\$")


def _legend(axes: Any, **kwargs: Any) -> None:
    # Outside the axes: a legend inside hides the very curves it names.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", **kwargs)


def _cumulative(axes: Any, times: Sequence[float], until: float, label: str | None = None) -> None:
    """Draw a count rising by one at each of ``times``, from zero at time zero to ``until``."""
    xs = [min(0.0, *times), *times]
    ys = list(range(len(times) + 1))
    if until > xs[-1]:
        xs.append(until)
        ys.append(ys[-1])
    axes.step(xs, ys, where="post", label=_text(label))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def _numeric_keys(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the keys (other than ``t``) with numeric values, in order of first appearance."""
    keys: dict[str, None] = {}
    for point in points:
        for key, value in point.items():
            if key != "t" and isinstance(value, int | float) and not isinstance(value, bool):
                keys.setdefault(key, None)
    return list(keys)


def _column(points: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(point.get(key, 0) or 0) for point in points]


def _wave_starts(run: Run) -> list[LogEntry]:
    return [entry for entry in run.log.entries if entry.kind == _WAVE_STARTED]


def _plot_campaign(run: Run) -> Figure | None:
    points = run.series.get("campaign") or []
    keys = _numeric_keys(points)
    if not points or not keys:
        return None
    times = _column(points, "t")
    figure, axes = _new_figure()
    # Action states partition the vehicles, so their counts stack; a total would count twice.
    totals = [key for key in keys if key == "total"]
    states = [key for key in keys if key != "total"]
    columns = [_column(points, key) for key in states]
    if all(value >= 0 for column in columns for value in column):
        axes.stackplot(times, columns, labels=[_text(k) for k in states], step="post", alpha=0.85)
    else:
        for key, column in zip(states, columns, strict=True):
            axes.step(times, column, where="post", label=_text(key))
    for key in totals:
        axes.step(times, _column(points, key), where="post", label=_text(key), color="black")
    for index, entry in enumerate(_wave_starts(run)):
        axes.axvline(
            entry.at,
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label="wave" if not index else None,
        )
    axes.set_ylabel("vehicles")
    axes.set_title("campaign progress by action state")
    _legend(axes)
    return figure


def _plot_waves(run: Run) -> Figure | None:
    if run.series.get("waves"):
        return _plot_series(run, "waves", "waves")
    starts = _wave_starts(run)
    if not starts:
        return None
    figure, axes = _new_figure(3.0)
    times = [entry.at for entry in starts]
    _cumulative(axes, times, run.now)
    if len(starts) <= 20:
        for number, entry in enumerate(starts, start=1):
            label = entry.detail if len(entry.detail) <= 30 else entry.detail[:29] + "…"
            axes.annotate(
                _text(label), (entry.at, number), textcoords="offset points", xytext=(4, 4)
            )
    axes.set_ylabel("waves started")
    axes.set_title("waves")
    return figure


def _is_failure(entry: LogEntry) -> bool:
    # A failed check is the verdict on failures, not one of them.
    return entry.source != "check" and _is_failure_word(entry.kind)


def _is_failure_word(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _FAILURE_WORDS)


def _plot_failures(run: Run) -> Figure | None:
    if run.series.get("failures"):
        return _plot_series(run, "failures", "failures over time")
    failures = [entry for entry in run.log.entries if _is_failure(entry)]
    if failures:
        by_kind: dict[str, list[float]] = {}
        for entry in failures:
            by_kind.setdefault(entry.kind, []).append(entry.at)
        kinds = sorted(by_kind, key=lambda kind: -len(by_kind[kind]))[:MAX_LINES_PER_PLOT]
        figure, axes = _new_figure(3.0)
        for kind in kinds:
            times = by_kind[kind]
            _cumulative(axes, times, run.now, kind)
        axes.set_ylabel("failures (cumulative)")
        axes.set_title("failures over time")
        _legend(axes)
        return figure
    points = run.series.get("campaign") or []
    keys = [key for key in _numeric_keys(points) if _is_failure_word(key)]
    if not keys or not any(value for key in keys for value in _column(points, key)):
        return None
    figure, axes = _new_figure(3.0)
    times = _column(points, "t")
    for key in keys:
        axes.step(times, _column(points, key), where="post", label=_text(key))
    axes.set_ylabel("vehicles")
    axes.set_title("failures over time")
    _legend(axes)
    return figure


def _plot_series(run: Run, name: str, title: str) -> Figure | None:
    points = run.series.get(name) or []
    keys = _numeric_keys(points)[:MAX_LINES_PER_PLOT]
    if not points or not keys:
        return None
    figure, axes = _new_figure(3.0)
    times = _column(points, "t")
    for key in keys:
        axes.step(times, _column(points, key), where="post", label=_text(key))
    axes.set_title(_text(title))
    _legend(axes)
    return figure


def _plot_timeline(run: Run) -> Figure | None:
    if not run.spans:
        return None
    lanes: dict[str, int] = {}
    steps: dict[str, None] = {}
    for span in run.spans:
        if span.lane not in lanes and len(lanes) < MAX_TIMELINE_LANES:
            lanes[span.lane] = len(lanes)
        steps.setdefault(span.step, None)
    cmap = colormaps["tab20"]
    colour = {step: cmap(index % 20) for index, step in enumerate(steps)}
    groups: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for span in run.spans:
        if span.lane in lanes:
            width = max(span.end - span.start, 0.0)
            groups.setdefault((span.lane, span.step, span.ok), []).append((span.start, width))
    figure, axes = _new_figure(max(2.5, 0.32 * len(lanes) + 1.6))
    for (lane, step, ok), ranges in groups.items():
        axes.broken_barh(
            ranges,
            (lanes[lane] - 0.4, 0.8),
            facecolors=colour[step],
            edgecolors="none" if ok else "red",
            linewidth=0 if ok else 1.5,
            hatch=None if ok else "//",
        )
    axes.set_yticks(range(len(lanes)), [_text(lane) for lane in lanes], fontsize="small")
    axes.set_ylim(len(lanes) - 0.5, -0.5)
    handles = [Patch(facecolor=colour[step], label=_text(step)) for step in list(steps)[:20]]
    if any(not span.ok for span in run.spans):
        handles.append(Patch(facecolor="white", edgecolor="red", hatch="//", label="failed"))
    _legend(axes, handles=handles)
    left_out = len({span.lane for span in run.spans}) - len(lanes)
    title = "timeline of steps per vehicle and ECU"
    axes.set_title(title + (f" (first {len(lanes)} lanes; {left_out} more)" if left_out else ""))
    return figure


# ---------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176f2c; font-weight: bold; }
.fail { color: #b00020; font-weight: bold; }
tr.bad td { background: #fff0f0; }
.note { color: #666; font-style: italic; }
.badge { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.3em; color: white; }
.badge.pass { background: #176f2c; color: white; }
.badge.fail { background: #b00020; color: white; }
img { max-width: 100%; }
code { font-size: 0.95em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _row(cells: Iterable[str], css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<tr{klass}>" + "".join(cells) + "</tr>\n"


def _td(value: Any, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}>{_e(value)}</td>"


def _header(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{_e(name)}</th>" for name in names) + "</tr>\n"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _write_html(run: Run, directory: Path, plots: list[_Plot], out: TextIO) -> None:
    verdict = "passed" if run.passed else "failed"
    css = "pass" if run.passed else "fail"
    out.write("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n")
    out.write(f"<title>{_e(run.name)} (seed {run.seed}): {verdict}</title>\n")
    out.write(f"<style>{_STYLE}</style>\n</head>\n<body>\n")
    out.write(
        f"<h1>scenario {_e(run.name)} <span class='badge {css}'>{verdict.upper()}</span></h1>\n"
    )
    out.write("<table>\n")
    summary: list[tuple[str, Any]] = [
        ("fidelity", run.fidelity),
        ("seed", run.seed),
        ("checks", f"{sum(c.passed for c in run.checks)} of {len(run.checks)} held"),
        ("scenario time", f"{run.now:.3f} s"),
        ("wall time", f"{run.wall_s:.2f} s"),
        ("events", run.log.count),
        ("log digest", log_digest(run)),
    ]
    if run.error:
        summary.insert(0, ("error", run.error))
    for name, value in summary:
        cell_css = "fail" if name == "error" else ""
        out.write(_row([f"<th>{_e(name)}</th>", _td(value, cell_css)]))
    out.write("</table>\n")

    params = list(_flatten(run.params.model_dump(mode="json")))
    if params:
        out.write("<h2>parameters</h2>\n<table>\n" + _header("parameter", "value"))
        for name, value in params:
            out.write(_row([_td(name), _td(format_value(value))]))
        out.write("</table>\n")

    out.write("<h2 id='checks'>checks</h2>\n")
    if run.checks:
        out.write("<table>\n" + _header("check", "result", "detail", "at (s)"))
        for check in run.checks:
            result = "pass" if check.passed else "FAIL"
            out.write(
                _row(
                    [
                        _td(check.name),
                        _td(result, "pass" if check.passed else "fail"),
                        _td(check.detail),
                        _td(f"{check.at:.3f}", "num"),
                    ],
                    "" if check.passed else "bad",
                )
            )
        out.write("</table>\n")
    else:
        out.write("<p class='note'>no checks were recorded (a run without checks fails)</p>\n")

    if run.figures:
        out.write("<h2 id='figures'>figures</h2>\n<table>\n" + _header("figure", "value"))
        for name, value in run.figures.items():
            out.write(_row([_td(name), _td(format_value(value), "num")]))
        out.write("</table>\n")

    if plots:
        out.write("<h2 id='plots'>plots</h2>\n")
        for title, png, note in plots:
            out.write(f"<h3>{_e(title)}</h3>\n")
            if png is not None:
                data = base64.b64encode(png).decode("ascii")
                out.write(f"<img alt='{_e(title)}' src='data:image/png;base64,{data}'>\n")
            if note:
                out.write(f"<p class='note'>{_e(note)}</p>\n")

    if run.attachments:
        out.write("<h2 id='attachments'>attachments</h2>\n<ul>\n")
        for name, relative in run.attachments.items():
            target = run.directory / relative
            href = _href(target, directory)
            size = f"{target.stat().st_size:,} bytes" if target.is_file() else "missing"
            out.write(
                f"<li><a href='{_e(href)}'>{_e(name)}</a> "
                f"<span class='note'>({_e(relative)}, {_e(size)})</span></li>\n"
            )
        out.write("</ul>\n")

    if run.outcomes:
        _write_outcomes(run, out)
    _write_log(run, out)
    out.write("</body>\n</html>\n")


def _href(target: Path, directory: Path) -> str:
    """Return a link from a page in ``directory`` to ``target``, relative where it can be."""
    try:
        return quote(Path(os.path.relpath(target, directory)).as_posix())
    except ValueError:  # another drive (Windows): no relative path exists
        return target.resolve().as_uri()


def _write_outcomes(run: Run, out: TextIO) -> None:
    shown = run.outcomes[:MAX_OUTCOME_ROWS]
    columns: dict[str, None] = {}
    for outcome in shown:
        for key in outcome:
            columns.setdefault(str(key), None)
    out.write(f"<h2 id='outcomes'>outcomes ({len(run.outcomes)})</h2>\n")
    if len(run.outcomes) > len(shown):
        out.write(
            f"<p class='note'>the first {len(shown)} of {len(run.outcomes)} are shown; "
            "report.json has all</p>\n"
        )
    out.write("<table>\n" + _header(*columns))
    for outcome in shown:
        values = {str(key): value for key, value in outcome.items()}
        out.write(_row(_td(format_value(values[c]) if c in values else "") for c in columns))
    out.write("</table>\n")


def _write_log(run: Run, out: TextIO) -> None:
    out.write(f"<h2 id='log'>event log ({run.log.count} events)</h2>\n")
    entries = run.log.entries
    if not run.log.keep:
        out.write(
            "<p class='note'>the run kept only the count and the digest of its log, "
            "not its entries</p>\n"
        )
        return
    half = MAX_LOG_ROWS // 2
    left_out = len(entries) - MAX_LOG_ROWS if len(entries) > MAX_LOG_ROWS else 0
    if left_out:
        out.write(
            f"<p class='note'>the first {half} and the last {half} events are shown; "
            f"{left_out} in between are left out (report.json has all)</p>\n"
        )
    out.write("<table>\n" + _header("at (s)", "source", "kind", "detail"))
    head = entries[:half] if left_out else entries
    for entry in head:
        out.write(_log_row(entry))
    if left_out:
        out.write(_row([f"<td colspan='4' class='note'>… {left_out} events left out …</td>"]))
        for entry in entries[-half:]:
            out.write(_log_row(entry))
    out.write("</table>\n")


def _log_row(entry: LogEntry) -> str:
    bad = _is_failure(entry) or (entry.source == "check" and entry.kind == "FAILED")
    return _row(
        [_td(f"{entry.at:.3f}", "num"), _td(entry.source), _td(entry.kind), _td(entry.detail)],
        "bad" if bad else "",
    )


__all__ = [
    "MAX_LOG_ROWS",
    "REPORT_FORMAT",
    "ReportFiles",
    "format_value",
    "jsonable",
    "log_digest",
    "summary_lines",
    "write_report",
]
