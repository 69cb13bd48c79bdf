"""Property: any request payload gets well-formed replies, and the ECU keeps serving."""

from __future__ import annotations

import pytest
from helpers import FakeClock, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from udsoncan import Response

from ecu_sim.faults import FaultInjector
from ecu_sim.nvm import Nvm
from ecu_sim.state import VehicleState
from ecu_sim.uds.server import UdsServer

KNOWN_SIDS = [0x10, 0x11, 0x14, 0x19, 0x22, 0x27, 0x28, 0x2E, 0x31, 0x34, 0x36, 0x37, 0x3E, 0x85]

payloads = st.one_of(
    st.binary(min_size=0, max_size=4095),
    st.binary(min_size=0, max_size=12),
    st.builds(
        lambda sid, sub, rest: bytes([sid, sub]) + rest,
        st.sampled_from(KNOWN_SIDS),
        st.integers(0, 255),
        st.binary(max_size=16),
    ),
    st.builds(
        lambda sid, rest: bytes([sid]) + rest,
        st.sampled_from(KNOWN_SIDS),
        st.binary(min_size=0, max_size=4094),
    ),
)


def check_reply(request: bytes, reply: bytes) -> None:
    sid = request[0]
    if reply[0] == 0x7F:
        assert len(reply) == 3, reply.hex()
        assert reply[1] == sid, reply.hex()
        assert reply[2] != 0x00, reply.hex()
        return
    assert reply[0] == sid + 0x40, f"{request[:8].hex()} -> {reply[:8].hex()}"
    response = Response.from_payload(reply)
    assert response.valid and response.positive, reply.hex()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads, functional=st.booleans())
def test_any_payload_over_the_wire(world, payload, functional):
    t = world.raw("ecm")
    use_functional = functional and 0 < len(payload) <= 7
    replies = t.functional(payload, 0.12) if use_functional else t.request(payload, 0.12)
    if not payload:
        assert replies == []
    for reply in replies:
        check_reply(payload, reply)
    # Still serving (a reset makes it deaf for its boot time only).
    assert wait_for(lambda: t.request("3e00", 0.1) == [b"\x7e\x00"], timeout=3.0)


@pytest.fixture
def logic_server(demo, tmp_path):
    clock = FakeClock()
    server = UdsServer(
        demo.ecu("ecm"), demo, Nvm(tmp_path / "ecm"), VehicleState(), FaultInjector(), clock
    )
    server.power_on()
    clock.advance(1.0)
    return server, clock


@settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=st.lists(payloads, min_size=1, max_size=6), functional=st.booleans())
def test_any_payload_sequence_in_logic(logic_server, sequence, functional):
    server, clock = logic_server
    for payload in sequence:
        replies = [o.payload for o in server.handle(payload, functional=functional)]
        clock.advance(0.2)
        replies += [o.payload for o in server.poll()]
        for reply in replies:
            check_reply(payload, reply)
    clock.advance(1.0)
    server.poll()
    assert [o.payload for o in server.handle(b"\x3e\x00")] == [b"\x7e\x00"]
