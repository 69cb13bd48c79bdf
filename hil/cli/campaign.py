"""``hil campaign``: create, start, pause, resume, abort, inspect and watch campaigns."""

from __future__ import annotations

import argparse
import datetime
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
        description="Target a release at the vehicles matching the filter, in waves.",
    )
    create.add_argument("--release", required=True, metavar="ID", help="release id (rel-N)")
    create.add_argument("--name", required=True)
    add_filter_options(create)
    create.add_argument(
        "--wave",
        action="append",
        default=[],
        metavar="N|P%",
        help="a wave of N vehicles or P%% of the targets (repeat); the rest form a last wave",
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
    try:
        if text.endswith("%"):
            return campaign_pb2.WaveSpec(percent=float(text[:-1]))
        return campaign_pb2.WaveSpec(count=int(text))
    except ValueError as exc:
        raise UsageError(f"--wave {text!r} is neither a count nor a percentage") from exc


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
    )
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
    table = Table(box=None)
    for column in ("wave", "size", "started", "outcomes"):
        table.add_column(column, no_wrap=True)
    for wave in campaign.waves:
        table.add_row(
            str(wave.index), str(wave.size), "yes" if wave.started else "no", _counts(wave.counts)
        )
    console.print(table)
    console.print(
        f"thresholds: success {campaign.success_threshold_pct:g}%, "
        f"error {campaign.error_threshold_pct:g}%, retries {campaign.max_retries}",
        highlight=False,
    )
