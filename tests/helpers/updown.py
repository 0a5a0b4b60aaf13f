"""`UpDown`: the life cycle the labs share (network namespaces, libvirtd pairs).

Contract: a subclass makes things in `_up()` and undoes them in `down()`, which must be
idempotent and must work on a half-made lab (it runs when `_up()` fails part-way). `up()`
calls `_up()` and, on any failure (an interrupt too), runs `down()` before re-raising, so a
failed start leaves no process or namespace behind. `with Lab(...) as lab:` is `up()` then,
whatever happens, `down()`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class UpDown:
    def _up(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def up(self) -> None:
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
