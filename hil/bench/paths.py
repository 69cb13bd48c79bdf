r"""Where ``hil`` looks for its configuration file and keeps its run-time state.

- Configuration: ``--hil-config FILE``, else ``$HIL_CONFIG``, else ``./hil.toml``,
  else ``hil.toml`` in the user's configuration directory (``$XDG_CONFIG_HOME/hil``
  or ``~/.config/hil`` on Linux, ``~/Library/Application Support/hil`` on macOS,
  ``%APPDATA%\hil`` on Windows); else none.
- State (the simulated bench's ports, its ECUs' NVM): ``$HIL_STATE_DIR``, else
  ``$XDG_STATE_HOME/hil`` or ``~/.local/state/hil`` on Linux,
  ``~/Library/Application Support/hil/state`` on macOS, ``%LOCALAPPDATA%\hil`` on Windows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "hil.toml"
ENV_CONFIG = "HIL_CONFIG"
ENV_BENCH = "HIL_BENCH"
ENV_STATE_DIR = "HIL_STATE_DIR"


@dataclass(frozen=True)
class ConfigLocation:
    """A configuration file and how it was chosen."""

    path: Path
    """Where the file is (as given; relative paths are relative to the working directory)."""
    origin: str
    """``--hil-config``, ``HIL_CONFIG``, ``./hil.toml`` or ``user config dir``."""
    explicit: bool
    """Named on the command line or in the environment: it must exist."""

    @property
    def display(self) -> str:
        """Return how messages name the file: as given, or as found."""
        return str(self.path)


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME") or env.get("USERPROFILE")
    return Path(home) if home else Path.home()


def user_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """Return the user's configuration directory for ``hil``."""
    env = os.environ if env is None else env
    if sys.platform == "win32":
        base = env.get("APPDATA")
        return Path(base) / "hil" if base else _home(env) / "AppData" / "Roaming" / "hil"
    if sys.platform == "darwin":
        return _home(env) / "Library" / "Application Support" / "hil"
    base = env.get("XDG_CONFIG_HOME")
    return (Path(base) if base else _home(env) / ".config") / "hil"


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Return the directory of ``hil``'s run-time state (not created here)."""
    env = os.environ if env is None else env
    given = env.get(ENV_STATE_DIR)
    if given:
        return Path(given)
    if sys.platform == "win32":
        base = env.get("LOCALAPPDATA")
        return Path(base) / "hil" if base else _home(env) / "AppData" / "Local" / "hil"
    if sys.platform == "darwin":
        return _home(env) / "Library" / "Application Support" / "hil" / "state"
    base = env.get("XDG_STATE_HOME")
    return (Path(base) if base else _home(env) / ".local" / "state") / "hil"


def find_config_file(
    given: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ConfigLocation | None:
    """Find the configuration file: ``given`` > ``$HIL_CONFIG`` > ``./hil.toml`` > user dir.

    A file named by ``given`` or the environment is returned whether it exists or not
    (reading it reports a missing file); the default places count only if they exist.
    """
    env = os.environ if env is None else env
    if given is not None and str(given):
        return ConfigLocation(Path(given), "--hil-config", explicit=True)
    from_env = env.get(ENV_CONFIG)
    if from_env:
        return ConfigLocation(Path(from_env), ENV_CONFIG, explicit=True)
    local = (cwd or Path.cwd()) / CONFIG_NAME
    if local.is_file():
        shown = Path(CONFIG_NAME) if cwd is None else local
        return ConfigLocation(shown, f"./{CONFIG_NAME}", explicit=False)
    user = user_config_dir(env) / CONFIG_NAME
    if user.is_file():
        return ConfigLocation(user, "user config dir", explicit=False)
    return None
