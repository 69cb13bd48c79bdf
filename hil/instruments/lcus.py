r"""LCUS-type USB relay boards (LC Technology and clones; a CH340 USB-serial chip).

What this driver assumes (from the boards' product notes and public drivers; not
checked on hardware here):

- 9600 baud, 8N1. One binary frame per switch: ``A0 <channel> <state> <checksum>``,
  channel counted from 1, state ``01`` on and ``00`` off, checksum the low byte of
  the sum of the first three bytes: ``A0 01 01 A2`` switches relay 1 on.
- The board does not answer a frame. Some multi-channel boards answer a single
  ``FF`` byte with their states as text, ``CH1:ON\r\nCH2:OFF\r\n...``; others
  answer nothing. So by default :meth:`LcusRelayBoard.get` returns the last state
  this driver set (:attr:`~LcusRelayBoard.reports_state` is ``False``); pass
  ``state_query=True`` for a board known to answer ``FF``.
- Boards may miss a frame that follows the previous one too closely: the driver
  waits ``command_gap_s`` (50 ms by default) between frames.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Self

from hil.instruments.base import RelayBoard
from hil.instruments.errors import InstrumentSettingError
from hil.instruments.link import SerialLink, SerialPort

FRAME_START = 0xA0
QUERY = 0xFF
_STATE = re.compile(rb"CH(\d+)\s*:\s*(ON|OFF)", re.IGNORECASE)


def lcus_frame(channel: int, on: bool) -> bytes:
    """Return the four-byte frame that switches ``channel`` (from 1) on or off."""
    body = bytes((FRAME_START, channel, 1 if on else 0))
    return body + bytes((sum(body) & 0xFF,))


def parse_lcus_states(reply: bytes) -> dict[int, bool]:
    r"""Parse the channel states in a ``CH1:ON\r\nCH2:OFF...`` reply."""
    return {int(ch): state.upper() == b"ON" for ch, state in _STATE.findall(reply)}


class LcusRelayBoard(RelayBoard):
    """An LCUS relay board (see the module docstring); channels 1..``channels``.

    Args:
        port: the open serial port (9600 8N1); the driver closes it.
        port_name: how messages name the port.
        channels: how many relays the board has (LCUS-1, -2, -4, -8).
        state_query: the board answers ``FF`` with its states; :meth:`get` asks it.
        timeout_s: how long to wait for the answer to ``FF``.
        command_gap_s: pause between frames.
        clock: monotonic clock (tests).
        sleep: how to wait out the command gap (tests).
    """

    kind = "lcus"
    first_channel = 1

    def __init__(
        self,
        port: SerialPort,
        *,
        port_name: str = "lcus",
        channels: int = 1,
        state_query: bool = False,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        link = SerialLink(
            port,
            port_name=port_name,
            device=self.device,
            timeout_s=timeout_s,
            command_gap_s=command_gap_s,
            clock=clock,
            sleep=sleep,
        )
        super().__init__(link, channels)
        if channels > 0xFE:
            raise InstrumentSettingError("an LCUS frame addresses at most 254 channels")
        self.state_query = state_query
        self._last_set: dict[int, bool] = {}

    @classmethod
    def open(
        cls,
        port_url: str,
        *,
        baudrate: int = 9600,
        channels: int = 1,
        state_query: bool = False,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.05,
    ) -> Self:
        """Open the board on ``port_url`` (a device path or a pyserial URL)."""
        return cls._on_port(
            port_url,
            baudrate=baudrate,
            timeout_s=timeout_s,
            channels=channels,
            state_query=state_query,
            command_gap_s=command_gap_s,
        )

    @property
    def reports_state(self) -> bool:
        """Whether :meth:`get` asks the board (``state_query``) rather than recalling."""
        return self.state_query

    def read_states(self) -> dict[int, bool]:
        """Ask the board (``FF``) for every channel's state."""
        command = "FF"
        wanted = set(self.channel_numbers)
        with self._link.lock:
            self._link.send(bytes((QUERY,)), command)
            reply = self._link.read_when(
                lambda buf: wanted <= set(parse_lcus_states(buf)) and buf.endswith(b"\n"),
                command,
            )
        states = parse_lcus_states(reply)
        if not wanted <= set(states):
            raise self._link.unexpected(reply, command)
        return {channel: states[channel] for channel in self.channel_numbers}

    def _set(self, channel: int, on: bool) -> None:
        frame = lcus_frame(channel, on)
        with self._link.lock:
            self._link.send(frame, frame.hex(" ").upper())
            self._last_set[channel] = on

    def _get(self, channel: int) -> bool:
        if self.state_query:
            return self.read_states()[channel]
        # The board cannot say: this is what we last told it (off if never).
        return self._last_set.get(channel, False)
