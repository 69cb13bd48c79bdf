"""A late reply to an earlier request is not taken for the next request's reply.

On a slow link (a remote bus, an emulated kernel) a reply can arrive after its
request timed out or was asked again. These tests run udsoncan's own client over
udsoncan's queue connection, with a responder thread that answers each request
only after a stale reply to another service.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import pytest
from udsoncan.client import Client
from udsoncan.connections import QueueConnection
from udsoncan.exceptions import TimeoutException, UnexpectedResponseException

from gateway.diag import MatchedReplies, replies_to

STALE = bytes.fromhex("62F190") + b"OLD"  # a ReadDataByIdentifier reply, late
SESSION_REPLY = bytes.fromhex("50030032 01F4".replace(" ", ""))


def responder(link: QueueConnection, replies: list[bytes], stop: threading.Event) -> None:
    """Answer every request with ``replies`` (in order), as an ECU behind a slow link.

    (udsoncan names the queues from the other end's side: requests go "to user".)
    """
    while not stop.is_set():
        try:
            link.touserqueue.get(timeout=0.05)
        except queue.Empty:
            continue
        for reply in replies:
            link.fromuserqueue.put(reply)


@pytest.fixture
def link() -> Iterator[QueueConnection]:
    connection = QueueConnection(name="slow-link")
    connection.open()
    yield connection
    connection.close()


@contextlib.contextmanager
def serve(link: QueueConnection, replies: list[bytes]) -> Iterator[None]:
    """Run a responder for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=responder, args=(link, replies, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_udsoncan_alone_takes_the_late_reply_for_its_own(link: QueueConnection) -> None:
    # What the matching is for: the bare client fails on the stale reply.
    client = Client(link, config={"p2_timeout": 1.0})
    with client, serve(link, [STALE, SESSION_REPLY]), pytest.raises(UnexpectedResponseException):
        client.change_session(3)


def test_a_late_reply_to_another_service_is_dropped(link: QueueConnection) -> None:
    matched = MatchedReplies(link, name="matched")
    client = Client(matched, config={"p2_timeout": 1.0})
    with client, serve(link, [STALE, SESSION_REPLY]):
        response = client.change_session(3)
    assert response.positive and response.get_payload() == SESSION_REPLY


def test_a_refusal_of_this_request_is_kept_and_another_one_dropped(link: QueueConnection) -> None:
    matched = MatchedReplies(link, name="matched")
    matched.open()
    matched.send(bytes.fromhex("1003"))
    link.fromuserqueue.put(bytes.fromhex("7F2235"))  # refuses an earlier RDBI
    link.fromuserqueue.put(bytes.fromhex("7F1022"))  # refuses this request
    assert matched.wait_frame(timeout=1.0, exception=True) == bytes.fromhex("7F1022")


def test_only_late_replies_end_in_a_timeout(link: QueueConnection) -> None:
    matched = MatchedReplies(link, name="matched")
    matched.open()
    matched.send(bytes.fromhex("3E00"))
    link.fromuserqueue.put(STALE)
    with pytest.raises(TimeoutException):
        matched.wait_frame(timeout=0.2, exception=True)
    assert matched.wait_frame(timeout=0.05) is None


@pytest.mark.parametrize(
    ("frame", "service", "expected"),
    [
        (bytes.fromhex("5003"), 0x10, True),
        (bytes.fromhex("7F1078"), 0x10, True),
        (bytes.fromhex("62F190"), 0x10, False),
        (bytes.fromhex("7F2235"), 0x10, False),
        (bytes.fromhex("7F"), 0x10, False),
        (b"", 0x10, False),
        (bytes.fromhex("7E00"), 0x3E, True),
    ],
)
def test_replies_to(frame: bytes, service: int, expected: bool) -> None:
    assert replies_to(frame, service) is expected
