r"""Numato Lab USB relay modules (1 to 32 relays; USB CDC, so the baud rate does not matter).

What this driver assumes (from Numato's user manuals and example code; not
checked on hardware here):

- Text commands ending in a carriage return: ``relay on 0``, ``relay off 0``,
  ``relay read 0``, ``ver``. Relays count from 0; the index is one character, so
  relays 10 to 31 are the upper-case letters ``A`` to ``V`` (``relay on 12`` would
  switch relay 1).
- The module is a console: it echoes the command, then ``\n\r``, then the
  answer (``on``/``off`` for ``relay read``, the version for ``ver``) and ``\n\r``
  if there is one, then the prompt ``>``. The driver reads up to the prompt,
  checks the echo and takes the lines in between as the answer.
- When it opens, the driver sends an empty line and waits for the prompt, so a
  half-typed command left in the module's line buffer does not spoil the first one.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable
from typing import Self

from hil.instruments.base import RelayBoard
from hil.instruments.errors import InstrumentSettingError
from hil.instruments.link import SerialLink, SerialPort

RELAY_INDEXES = string.digits + string.ascii_uppercase[:22]
"""Index characters of relays 0..31: ``0``-``9`` then ``A``-``V``."""
PROMPT = b">"
NEWLINE = b"\n\r"


def numato_index(channel: int) -> str:
    """Return the one-character index of relay ``channel`` (0..31): ``12`` -> ``C``."""
    if not 0 <= channel < len(RELAY_INDEXES):
        raise InstrumentSettingError(f"a Numato module has relays 0..31, not {channel}")
    return RELAY_INDEXES[channel]


class NumatoRelayBoard(RelayBoard):
    """A Numato USB relay module (see the module docstring); channels 0..``channels``-1.

    Args:
        port: the open serial port; the driver closes it.
        port_name: how messages name the port.
        channels: how many relays the module has (1, 2, 4, 8, 16 or 32).
        timeout_s: how long to wait for the prompt after a command.
        command_gap_s: pause after each exchange before the next command.
        sync: send an empty line first and wait for the prompt.
        clock: monotonic clock (tests).
        sleep: how to wait out the command gap (tests).
    """

    kind = "numato"
    first_channel = 0

    def __init__(
        self,
        port: SerialPort,
        *,
        port_name: str = "numato",
        channels: int = 8,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.0,
        sync: bool = True,
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
        if channels > len(RELAY_INDEXES):
            raise InstrumentSettingError(f"a Numato module has at most 32 relays, not {channels}")
        if sync:
            self.command("")

    @classmethod
    def open(
        cls,
        port_url: str,
        *,
        baudrate: int = 19200,
        channels: int = 8,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.0,
        sync: bool = True,
    ) -> Self:
        """Open the module on ``port_url`` (a device path or a pyserial URL)."""
        return cls._on_port(
            port_url,
            baudrate=baudrate,
            timeout_s=timeout_s,
            channels=channels,
            command_gap_s=command_gap_s,
            sync=sync,
        )

    @property
    def reports_state(self) -> bool:
        """Always ``True``: :meth:`get` sends ``relay read``."""
        return True

    def identify(self) -> str:
        """Return the firmware version (``ver``)."""
        lines = self.command("ver")
        if len(lines) != 1:
            raise self._link.unexpected(NEWLINE.join(lines), "ver")
        return lines[0].decode("ascii", errors="backslashreplace")

    def command(self, command: str) -> list[bytes]:
        """Send one console command; return the lines between its echo and the prompt."""
        with self._link.lock:
            self._link.send(command.encode("ascii") + b"\r", command)
            reply = self._link.read_until(PROMPT, command)
        echo, *lines = reply[: -len(PROMPT)].split(NEWLINE)
        if echo.strip() != command.encode("ascii"):
            raise self._link.unexpected(reply, command, "no echo of the command")
        return [line.strip() for line in lines if line.strip()]

    def _set(self, channel: int, on: bool) -> None:
        self.command(f"relay {'on' if on else 'off'} {numato_index(channel)}")

    def _get(self, channel: int) -> bool:
        command = f"relay read {numato_index(channel)}"
        lines = self.command(command)
        if lines == [b"on"]:
            return True
        if lines == [b"off"]:
            return False
        raise self._link.unexpected(NEWLINE.join(lines), command)
