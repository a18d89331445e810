"""A sandbox that runs nothing: a function answers each cell. For testing code that drives sandboxes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rlmbox.sandbox.base import CellResult, SandboxBackend

__all__ = ["FakeSandbox"]

CellHandler = Callable[[str], CellResult | Awaitable[CellResult]]


class FakeSandbox(SandboxBackend):
    """``FakeSandbox(lambda code: CellResult(stdout="hi"))``; ``cells`` records the code it was given."""

    def __init__(self, cell_handler: CellHandler, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._cell_handler = cell_handler
        self.cells: list[str] = []
        self.starts = 0
        self.stops = 0

    async def _start(self) -> None:
        self.starts += 1

    async def _execute(self, code: str, timeout: float) -> CellResult:
        self.cells.append(code)
        result = self._cell_handler(code)
        return result if isinstance(result, CellResult) else await result

    async def _stop(self) -> None:
        self.stops += 1
