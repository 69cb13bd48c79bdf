"""``hil campaign``: create, start, pause, resume, abort, inspect and watch campaigns."""

from __future__ import annotations

import argparse
import datetime
import math
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from backend_stub.api import campaign_pb2, common_pb2
from hil.cli._backend import (
    CALL_TIMEOUT_S,
    add_backend_options,
    as_dict,
    operator_channel,
    print_json,
    state_name,
)
from hil.cli.vehicles import add_filter_options, filter_from
from hil.errors import UsageError

_UINT32_MAX = 2**32 - 1
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ABORT_FAILURES = {
    "failed": campaign_pb2.ABORT_FAILURE_FAILED,
    "rolled_back": campaign_pb2.ABORT_FAILURE_ROLLED_BACK,
    "rolled-back": campaign_pb2.ABORT_FAILURE_ROLLED_BACK,
    "any": campaign_pb2.ABORT_FAILURE_ANY,
}
_RATE_TRIGGERS = {
    "notified": campaign_pb2.RATE_INCREASE_ON_NOTIFIED,
    "succeeded": campaign_pb2.RATE_INCREASE_ON_SUCCEEDED,
}
_RATE_OPTIONS = ("rate_factor", "rate_every", "rate_on", "rate_max")

_VERBS = {
    "start": "StartCampaign",
    "pause": "PauseCampaign",
    "resume": "ResumeCampaign",
    "abort": "AbortCampaign",
    "status": "GetCampaign",
}


def add_subparser(subparsers: Any) -> None:
    """Register ``hil campaign``."""
    parser = subparsers.add_parser("campaign", help="staged rollouts of a release")
    actions = parser.add_subparsers(dest="campaign_command", metavar="ACTION")
    actions.required = True
    create = actions.add_parser(
        "create",
        help="create a campaign (a draft unless --start)",
        description="Target a release at the vehicles matching the filter, in waves. "
        "A wave starts when the wave before it reaches the success threshold and, with "
        "@DELAY, not before DELAY after the campaign's start (Mender-like phases). "
        "--rate releases a started wave's vehicles at a rate that may grow "
        "(AWS IoT Jobs' exponential rollout); --abort-if aborts the whole campaign "
        "on a failure rate over all waves (AWS IoT Jobs' abort criteria).",
        epilog="examples: --wave 1 --wave 10%@1h --wave 50%@1d (the rest follows wave 2 "
        "without a delay); --rate 60/min --rate-factor 2 --rate-every 100 --rate-max 1000; "
        "--abort-if failed:5:100 --abort-if any:10%:20",
    )
    create.add_argument("--release", required=True, metavar="ID", help="release id (rel-N)")
    create.add_argument("--name", required=True)
    add_filter_options(create)
    create.add_argument(
        "--wave",
        action="append",
        default=[],
        metavar="SIZE[@DELAY]",
        help="a wave of N vehicles or P%% of the targets (repeat); the rest form a last wave "
        "(no delay). @DELAY: not before DELAY after the start, in s (default), m, h or d, "
        "e.g. 10%%@30m",
    )
    create.add_argument("--success-threshold", type=float, metavar="PCT", help="default 95")
    create.add_argument("--error-threshold", type=float, metavar="PCT", help="default 10")
    create.add_argument("--max-retries", type=int, default=0, metavar="N")
    create.add_argument(
        "--action-timeout", type=int, default=0, metavar="S", help="fail a silent vehicle after S"
    )
    create.add_argument(
        "--force", action="store_true", help="include vehicles without compatible hardware"
    )
    rate = create.add_argument_group("rollout rate")
    rate.add_argument(
        "--rate",
        metavar="BASE[/min]",
        help="release a started wave's vehicles at BASE per minute (1..100000) instead of "
        "all at once",
    )
    rate.add_argument(
        "--rate-factor", type=float, metavar="F", help="multiply the rate by F (1..5; default 1)"
    )
    rate.add_argument(
        "--rate-every", type=int, metavar="N", help="... after every N more vehicles (0: never)"
    )
    rate.add_argument(
        "--rate-on",
        choices=tuple(_RATE_TRIGGERS),
        help="... counting vehicles notified (default) or succeeded",
    )
    rate.add_argument(
        "--rate-max", type=int, metavar="M", help="never above M per minute (default 100000)"
    )
    create.add_argument(
        "--abort-if",
        action="append",
        default=[],
        metavar="KIND:PCT:MIN",
        help="abort the campaign once at least MIN vehicles (over all waves) have succeeded, "
        "failed or rolled back with no retry left, and PCT%% of them count as KIND: failed, "
        "rolled_back or any (either); repeat for up to 10 criteria, e.g. failed:5:100",
    )
    create.add_argument("--start", action="store_true", help="start it at once")
    add_backend_options(create)
    create.set_defaults(run=run_create)
    for verb in _VERBS:
        action = actions.add_parser(verb, help=f"{verb} a campaign")
        action.add_argument("campaign_id", metavar="ID")
        if verb in ("pause", "abort"):
            action.add_argument("--reason", default="", help="recorded with the campaign")
        add_backend_options(action)
        action.set_defaults(run=run_verb, verb=verb)
    listing = actions.add_parser("list", help="list campaigns")
    add_backend_options(listing)
    listing.set_defaults(run=run_list)
    watch = actions.add_parser("watch", help="print a campaign's events until it ends")
    watch.add_argument("campaign_id", metavar="ID")
    watch.add_argument("--after", type=int, default=0, metavar="EVENT", help="skip earlier events")
    add_backend_options(watch)
    watch.set_defaults(run=run_watch)


def _wave(text: str) -> campaign_pb2.WaveSpec:
    size, at, delay = text.partition("@")
    try:
        if size.endswith("%"):
            wave = campaign_pb2.WaveSpec(percent=float(size[:-1]))
        else:
            wave = campaign_pb2.WaveSpec(count=int(size))
    except ValueError as exc:
        raise UsageError(f"--wave {text!r} is neither a count nor a percentage") from exc
    if at:
        wave.start_after_s = _seconds(delay, f"--wave {text!r}")
    return wave


def _seconds(text: str, option: str) -> float:
    """Parse a delay: a number with an optional unit s, m, h or d."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _SECONDS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{option}: the delay must be a number of s, m, h or d, e.g. 30m")
    return value * _SECONDS[unit]


def _count(value: int | None, option: str) -> int | None:
    if value is not None and not 0 <= value <= _UINT32_MAX:
        raise UsageError(f"{option} must be a whole number from 0 to {_UINT32_MAX}")
    return value


def _rate(args: argparse.Namespace) -> campaign_pb2.RolloutRate | None:
    if args.rate is None:
        given = [name for name in _RATE_OPTIONS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --rate")
        return None
    base = args.rate.removesuffix("/min")
    if not base.isdigit():
        raise UsageError(f"--rate {args.rate!r} is not a number per minute, e.g. 60/min")
    rate = campaign_pb2.RolloutRate(base_per_minute=_count(int(base), "--rate") or 0)
    if args.rate_factor is not None:
        rate.increment_factor = args.rate_factor
    if args.rate_every is not None:
        rate.increase_every = _count(args.rate_every, "--rate-every") or 0
    if args.rate_on is not None:
        rate.increase_on = _RATE_TRIGGERS[args.rate_on]
    if args.rate_max is not None:
        rate.maximum_per_minute = _count(args.rate_max, "--rate-max") or 0
    return rate


def _abort_criterion(text: str) -> campaign_pb2.AbortCriterion:
    kind, _, rest = text.partition(":")
    pct, _, least = rest.partition(":")
    try:
        threshold = float(pct.removesuffix("%"))
        minimum = int(least)
    except ValueError:
        threshold, minimum = math.nan, -1
    if kind not in _ABORT_FAILURES or not math.isfinite(threshold) or minimum < 0:
        raise UsageError(
            f"--abort-if {text!r} is not KIND:PCT:MIN (KIND failed, rolled_back or any), "
            "e.g. failed:5:100"
        )
    return campaign_pb2.AbortCriterion(
        failure=_ABORT_FAILURES[kind],
        threshold_pct=threshold,
        min_executed=_count(minimum, "--abort-if MIN") or 0,
    )


def run_create(args: argparse.Namespace) -> int:
    """Create (and maybe start) a campaign."""
    if args.max_retries < 0 or args.action_timeout < 0:
        raise UsageError("--max-retries and --action-timeout must not be negative")
    request = campaign_pb2.CreateCampaignRequest(
        name=args.name,
        release_id=args.release,
        filter=filter_from(args),
        waves=[_wave(w) for w in args.wave],
        max_retries=args.max_retries,
        action_timeout_s=args.action_timeout,
        force=args.force,
        request_id=uuid.uuid4().hex,
        abort_criteria=[_abort_criterion(c) for c in args.abort_if],
    )
    rate = _rate(args)
    if rate is not None:
        request.rollout_rate.CopyFrom(rate)
    if args.success_threshold is not None:
        request.success_threshold_pct = args.success_threshold
    if args.error_threshold is not None:
        request.error_threshold_pct = args.error_threshold
    with operator_channel(args) as stubs:
        campaign = stubs.campaign.CreateCampaign(request, timeout=CALL_TIMEOUT_S)
        if args.start:
            campaign = stubs.campaign.StartCampaign(
                campaign_pb2.CampaignRequest(campaign_id=campaign.campaign_id),
                timeout=CALL_TIMEOUT_S,
            )
    _show(args, campaign)
    return 0


def run_verb(args: argparse.Namespace) -> int:
    """Start, pause, resume, abort or show a campaign."""
    request = campaign_pb2.CampaignRequest(
        campaign_id=args.campaign_id, reason=getattr(args, "reason", "")
    )
    with operator_channel(args) as stubs:
        campaign = getattr(stubs.campaign, _VERBS[args.verb])(request, timeout=CALL_TIMEOUT_S)
    _show(args, campaign)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List campaigns."""
    with operator_channel(args) as stubs:
        reply = stubs.campaign.ListCampaigns(
            campaign_pb2.ListCampaignsRequest(page_size=1000), timeout=CALL_TIMEOUT_S
        )
    if args.json:
        print_json([as_dict(c) for c in reply.campaigns])
        return 0
    table = Table(box=None)
    for column in ("campaign", "name", "release", "state", "wave", "targets", "outcomes"):
        table.add_column(column, no_wrap=True)
    for campaign in reply.campaigns:
        table.add_row(
            campaign.campaign_id,
            campaign.name,
            campaign.release_id,
            state_name(campaign.state, common_pb2.CampaignState),
            f"{campaign.current_wave + 1}/{len(campaign.waves)}",
            str(campaign.target_count),
            _counts(campaign.counts),
        )
    Console().print(table)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    """Print events as they happen until the campaign ends."""
    request = campaign_pb2.WatchCampaignRequest(
        campaign_id=args.campaign_id, after_event_id=args.after
    )
    console = Console()
    with operator_channel(args) as stubs:
        for event in stubs.campaign.WatchCampaign(request):
            if args.json:
                print_json(as_dict(event))
                continue
            at = datetime.datetime.fromtimestamp(event.at.ToNanoseconds() / 1e9, datetime.UTC)
            state = state_name(event.action_state) if event.action_state else ""
            console.print(
                f"{at:%H:%M:%S.%f}"[:-3],
                f"#{event.event_id}",
                event.kind,
                event.vin,
                state,
                event.detail,
                highlight=False,
            )
    return 0


def _counts(counts: Any) -> str:
    return ", ".join(f"{state_name(c.state)} {c.count}" for c in counts)


def _show(args: argparse.Namespace, campaign: campaign_pb2.Campaign) -> None:
    if args.json:
        print_json(as_dict(campaign))
        return
    console = Console()
    state = state_name(campaign.state, common_pb2.CampaignState)
    console.print(
        f"{campaign.campaign_id} {campaign.name!r}: {state}, release {campaign.release_id}, "
        f"{campaign.target_count} vehicle(s)"
        + (f", {campaign.excluded_count} excluded" if campaign.excluded_count else ""),
        highlight=False,
    )
    if campaign.pause_reason:
        console.print(f"reason: {campaign.pause_reason}", highlight=False)
    if campaign.HasField("started_at"):
        console.print(f"started: {_when(campaign.started_at)}", highlight=False)
    timed = any(wave.start_after_s > 0 for wave in campaign.waves)
    table = Table(box=None)
    for column in ("wave", "size", "started", *(["starts"] if timed else []), "outcomes"):
        table.add_column(column, no_wrap=True)
    for wave in campaign.waves:
        starts = []
        if timed:
            text = f"+{_duration(wave.start_after_s)}" if wave.start_after_s > 0 else "-"
            if wave.HasField("starts_at"):
                text += f" ({_when(wave.starts_at)})"
            starts.append(text)
        table.add_row(
            str(wave.index),
            str(wave.size),
            "yes" if wave.started else "no",
            *starts,
            _counts(wave.counts),
        )
    console.print(table)
    console.print(
        f"thresholds: success {campaign.success_threshold_pct:g}%, "
        f"error {campaign.error_threshold_pct:g}%, retries {campaign.max_retries}",
        highlight=False,
    )
    if campaign.HasField("rollout_rate"):
        console.print(f"rate: {_describe_rate(campaign)}", highlight=False)
    if campaign.abort_criteria:
        console.print(
            "abort if: " + "; ".join(_describe_criterion(c) for c in campaign.abort_criteria),
            highlight=False,
        )


def _when(stamp: Any) -> str:
    at = datetime.datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9, datetime.UTC)
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"


def _duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{seconds / _SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


def _describe_rate(campaign: campaign_pb2.Campaign) -> str:
    rate = campaign.rollout_rate
    text = (
        f"{campaign.rate_per_minute:g}/min now, {campaign.released} released "
        f"(base {rate.base_per_minute}/min"
    )
    if rate.increase_every and rate.increment_factor > 1:
        trigger = campaign_pb2.RateIncreaseOn.Name(rate.increase_on)
        trigger = trigger.removeprefix("RATE_INCREASE_ON_").lower()
        text += f", x{rate.increment_factor:g} every {rate.increase_every} {trigger}"
    return text + f", max {rate.maximum_per_minute}/min)"


def _describe_criterion(criterion: Any) -> str:
    kind = campaign_pb2.AbortFailure.Name(criterion.failure).removeprefix("ABORT_FAILURE_")
    return f"{kind.lower()} >= {criterion.threshold_pct:g}% of >= {criterion.min_executed} executed"
