"""Simulated relay boards: an LCUS board (binary frames) and a Numato module (a console)."""

from __future__ import annotations

from hil.instruments.sim.base import SimInstrument, SimSession

_LCUS_START = 0xA0
_LCUS_QUERY = 0xFF
_NUMATO_INDEXES = "0123456789ABCDEFGHIJKLMNOPQRSTUV"


class _RelaySim(SimInstrument):
    first_channel = 1

    def __init__(self, *, channels: int, tcp: bool, pty: bool | None) -> None:
        super().__init__(tcp=tcp, pty=pty)
        if channels < 1:
            raise ValueError(f"a board has at least one relay, not {channels}")
        self.relays = dict.fromkeys(range(self.first_channel, self.first_channel + channels), False)
        """Relay states by channel number as printed on the board (settable by tests)."""

    @property
    def states(self) -> dict[int, bool]:
        """A copy of the relay states."""
        with self.lock:
            return dict(self.relays)


class _LcusSession(SimSession):
    def __init__(self, sim: SimLcusBoard) -> None:
        self._sim = sim
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        replies: list[bytes] = []
        while self._buf:
            first = self._buf[0]
            if first == _LCUS_QUERY:
                self._buf = self._buf[1:]
                replies += self._sim.query()
            elif first == _LCUS_START:
                if len(self._buf) < 4:
                    break
                frame, self._buf = self._buf[:4], self._buf[4:]
                self._sim.frame(frame)
            else:
                # Out of step: skip to the next frame start, as the board's parser does.
                self._sim.bad_frames += 1
                self._buf = self._buf[1:]
        return replies


class SimLcusBoard(_RelaySim):
    r"""A simulated LCUS relay board: frames ``A0 ch state sum``, channels from 1.

    Frames with a wrong checksum or channel are ignored (counted in
    :attr:`bad_frames`), as the board does. With ``answers_query`` the board answers
    ``FF`` with ``CH1:ON\r\nCH2:OFF\r\n...``; without, it stays silent like the
    boards that do not support it.

    Args:
        channels: relays on the board.
        answers_query: answer the ``FF`` state query.
        tcp: serve on loopback TCP.
        pty: serve on a pseudo-terminal (``None``: where available).
    """

    def __init__(
        self,
        *,
        channels: int = 4,
        answers_query: bool = True,
        tcp: bool = True,
        pty: bool | None = None,
    ) -> None:
        super().__init__(channels=channels, tcp=tcp, pty=pty)
        self.answers_query = answers_query
        self.bad_frames = 0

    def session(self) -> SimSession:
        """Return a new connection's frame parser."""
        return _LcusSession(self)

    def frame(self, frame: bytes) -> None:
        """Carry out one four-byte frame (the caller holds :attr:`lock`)."""
        self.log_command(frame.hex(" ").upper())
        start, channel, state, checksum = frame
        if (start + channel + state) & 0xFF != checksum or channel not in self.relays or state > 1:
            self.bad_frames += 1
            return
        self.relays[channel] = state == 1

    def query(self) -> list[bytes]:
        """Return the reply to ``FF`` (the caller holds :attr:`lock`)."""
        self.log_command("FF")
        if not self.answers_query:
            return []
        text = "".join(f"CH{ch}:{'ON' if on else 'OFF'}\r\n" for ch, on in self.relays.items())
        return [text.encode("ascii")]


class _NumatoSession(SimSession):
    def __init__(self, sim: SimNumatoBoard) -> None:
        self._sim = sim
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data.replace(b"\n", b"")
        replies: list[bytes] = []
        while b"\r" in self._buf:
            line, self._buf = self._buf.split(b"\r", 1)
            replies.append(self._sim.execute(line.decode("ascii", "replace")))
        return replies


class SimNumatoBoard(_RelaySim):
    r"""A simulated Numato USB relay module: a console with echo and a ``>`` prompt.

    Commands end in ``\r``; the module answers with the echo, ``\n\r``, the
    answer and ``\n\r`` if there is one, and ``>``. Relays count from 0; the
    index is one character (``0``-``9``, then ``A``-``V``), and as on the real
    module only that first character counts: ``relay on 12`` switches relay 1.
    Unknown commands get only the prompt. (The real module echoes each character as
    it arrives; here the echo comes with the answer, which a client cannot tell
    apart when it sends a whole line at once.)

    Args:
        channels: relays on the module (up to 32).
        version: the ``ver`` reply.
        tcp: serve on loopback TCP.
        pty: serve on a pseudo-terminal (``None``: where available).
    """

    first_channel = 0

    def __init__(
        self,
        *,
        channels: int = 16,
        version: str = "00000008",
        tcp: bool = True,
        pty: bool | None = None,
    ) -> None:
        if channels > len(_NUMATO_INDEXES):
            raise ValueError(f"a Numato module has at most 32 relays, not {channels}")
        super().__init__(channels=channels, tcp=tcp, pty=pty)
        self.version = version

    def session(self) -> SimSession:
        """Return a new connection's console."""
        return _NumatoSession(self)

    def execute(self, line: str) -> bytes:
        """Carry out one console line (the caller holds :attr:`lock`); return the output."""
        self.log_command(line)
        answer = self._answer(line.split())
        body = line + "\n\r" + (answer + "\n\r" if answer else "") + ">"
        return body.encode("ascii", "replace")

    def _answer(self, words: list[str]) -> str | None:
        if words == ["ver"]:
            return self.version
        if words == ["id", "get"]:
            return "00000000"
        if len(words) == 3 and words[0] == "relay" and words[2]:
            index = _NUMATO_INDEXES.find(words[2][0])
            if index < 0 or index not in self.relays:
                return None
            if words[1] == "on":
                self.relays[index] = True
            elif words[1] == "off":
                self.relays[index] = False
            elif words[1] == "read":
                return "on" if self.relays[index] else "off"
        return None
