"""Click value types that refuse, at parse time, what would break a command later.

click's own ``FloatRange`` lets ``nan`` and ``inf`` through (NaN compares false with
its bounds) and ``Path`` does not ask whether a file can be written where it names;
such a value then fails deep inside a command, after etcd was contacted or a clone was
started, as a traceback. These types check the value where it is parsed, so a bad flag
or ``KAYLEE_*`` variable is click's one-line usage error naming the option, and nothing
has been read or written yet.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import click

from kaylee_sync.bounds import MAX_DURATION, check_duration

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Seconds(click.FloatRange):
    """A finite number of seconds in [min, max] (``nan`` and ``inf`` refused)."""

    name = "seconds"

    def __init__(self, min: float, max: float = MAX_DURATION) -> None:
        super().__init__(min=min, max=max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return super().convert(number, param, ctx)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` → seconds, positive and at most ten years."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        compact = str(value).replace(" ", "")
        parts = _DURATION.findall(compact)
        if not compact or "".join(n + u for n, u in parts) != compact:
            self.fail(f"{value!r}: expected a duration such as 30m, 2h or 1h30m", param, ctx)
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        try:
            # inf (a 400-digit number) and 99999999d end here, not in a stored "until".
            return check_duration(seconds, minimum=math.ulp(0.0))
        except ValueError:
            days = MAX_DURATION / 86400
            self.fail(f"{value!r}: must be positive and at most {days:.0f}d", param, ctx)


class NewFile(click.Path):
    """A file path to write: its directory must exist, and it must not be a directory."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        try:
            if not path.absolute().parent.is_dir():
                self.fail(f"{str(path)!r}: its directory does not exist.", param, ctx)
            if path.exists() and not (path.is_file() or path.is_char_device()):
                self.fail(f"{str(path)!r} is not a regular file.", param, ctx)
        except OSError as exc:  # a name too long, a loop of symlinks
            self.fail(f"{str(path)!r}: {exc.strerror}.", param, ctx)
        return path


class Directory(click.Path):
    """A directory kaylee may create: if it exists it is a directory, else it can be made."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        try:
            if path.exists():
                if not path.is_dir():
                    self.fail(f"{str(path)!r} is not a directory.", param, ctx)
                return path
            existing = next(p for p in path.absolute().parents if p.exists())
            usable = existing.is_dir() and os.access(existing, os.W_OK)
        except OSError as exc:  # a name too long, a loop of symlinks
            self.fail(f"{str(path)!r}: {exc.strerror}.", param, ctx)
        if not usable:
            self.fail(f"{str(path)!r} cannot be created in {str(existing)!r}.", param, ctx)
        return path
