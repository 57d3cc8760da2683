"""Output for people: ``rich`` tables and live progress when standard output is a terminal and
``rich`` is installed (``requirements-dev.txt``), plain aligned lines otherwise (CI, pipes, files).

Every cell goes through :func:`shared.redact.shown` first: a name cannot reorder or forge a line, and
no cell is read as ``rich`` markup.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from shared.redact import shown


def console():
    """A ``rich`` console for standard output when it is a terminal; ``None`` for plain output."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(highlight=False)


def plain_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[shown(str(cell)) for cell in row] for row in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *cells, strict=False)]
    lines = [list(header), ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)).rstrip() for line in lines)


def print_table(rows: Sequence[Sequence[object]], header: Sequence[str], *, empty: str, title: str = "") -> None:
    """Print a table (``empty`` when there are no rows)."""
    if not rows:
        print(empty)
        return
    out = console()
    if out is None:
        print(plain_table(rows, header))
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(*header, box=box.SIMPLE_HEAD, title=title or None, title_justify="left", header_style="bold")
    for row in rows:
        table.add_row(*(Text(shown(str(cell))) for cell in row))
    out.print(table)


class Progress:
    """A live line for a long wait (spinner, steps done, elapsed time) above which notes are printed;
    on a terminal without ``rich``, or not on a terminal, notes only, as plain lines."""

    def __init__(self, steps: int) -> None:
        self.steps, self.started = steps, time.monotonic()
        self._console = console()
        self._progress = None
        self._task = None

    def __enter__(self) -> Progress:
        if self._console is not None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                BarColumn(bar_width=20),
                TextColumn("{task.description}", markup=False),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.steps)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, step: int, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, description=shown(description))

    def note(self, line: str) -> None:
        if self._progress is not None:
            from rich.text import Text

            self._progress.console.print(Text(shown(line)))
        else:
            print(shown(line), flush=True)
