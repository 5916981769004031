"""What `mirror seed` shows: a progress bar on a terminal, plain lines otherwise (logs, CI), and
a summary at the end. Both reporters print one line per finished image."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from mirror.airgap.seed import ImageResult, SeedSummary

REDRAW_INTERVAL = 0.1  # seconds; a terminal needs no more than ten frames a second


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def image_line(r: ImageResult) -> str:
    if r.error:
        return f"FAIL {r.ref}: {r.error}"
    parts = [f"{r.manifests} manifest{'s' if r.manifests != 1 else ''}",
             f"{r.blobs} blobs ({r.blobs_fetched} fetched, {human_bytes(r.bytes_fetched)})"]
    if r.platforms_skipped:
        parts.append(f"{r.platforms_skipped} platforms skipped")
    if r.referrers:
        parts.append(f"{r.referrers} referrers")
    return f"ok   {r.ref} {r.digest}: {', '.join(parts)}"


def summary_lines(summary: SeedSummary, seconds: float) -> list[str]:
    ok = [r for r in summary.results if not r.error]
    lines = [f"seed: {len(ok)} images ok, {summary.failed} failed; {summary.blobs_fetched} blobs "
             f"fetched ({human_bytes(summary.bytes_fetched)}), {summary.blobs_cached} already "
             f"cached; {seconds:.1f}s"]
    lines += [f"  failed: {r.ref}: {r.error}" for r in summary.results if r.error]
    lines += [f"  failed: {e}" for e in summary.errors]
    return lines


class LineReporter:
    """One line per image: for logs and pipes, where a redrawn bar would be noise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def total(self, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def image_done(self, result: ImageResult) -> None:
        print(image_line(result), file=self.out, flush=True)

    def problem(self, message: str) -> None:
        print(f"FAIL {message}", file=self.out, flush=True)

    def close(self) -> None:
        pass


class BarReporter:
    """A one-line bar on a terminal, redrawn at most ten times a second; finished images are
    printed above it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.expected = 0
        self.done = 0
        self.images = 0
        self._drawn = 0.0
        self._visible = False

    def total(self, nbytes: int) -> None:
        self.expected += nbytes
        self._draw()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def image_done(self, result: ImageResult) -> None:
        self.images += 1
        self._print(image_line(result))

    def problem(self, message: str) -> None:
        self._print(f"FAIL {message}")

    def close(self) -> None:
        if self._visible:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self._visible = False

    def _print(self, line: str) -> None:
        self.close()
        print(line, file=self.out, flush=True)
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_INTERVAL:
            return
        self._drawn = now
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 50))
        frac = min(1.0, self.done / self.expected) if self.expected else 0.0
        filled = int(frac * width)
        bar = "#" * filled + "." * (width - filled)
        text = (f"\r\x1b[2K[{bar}] {frac * 100:3.0f}% {human_bytes(self.done)} / "
                f"{human_bytes(self.expected)}, {self.images} images done")
        self.out.write(text)
        self.out.flush()
        self._visible = True
