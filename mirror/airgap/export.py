"""`mirror export` to a file or to parts: lay the stream out, resume where an interrupted run of
the same export stopped, and say what was sent and what was left out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirror.airgap.bundle import BundleError, CacheView, ExportPlan, build_layout
from mirror.airgap.parts import BundleOutput
from mirror.airgap.tarlayout import LayoutError, write_layout


@dataclass(slots=True)
class ExportResult:
    outputs: list[Path] = field(default_factory=list)  # the bundle file, or its parts in order
    stream_bytes: int = 0  # the tar stream (parts add a 512-byte header each)
    resumed_from: int = 0  # bytes an interrupted run had already written and fsynced


def export_to_path(view: CacheView, plan: ExportPlan, path: Path, split: int | None = None,
                   progress: Callable[[int], None] | None = None,
                   started: Callable[[int, int], None] | None = None) -> ExportResult:
    """Write the bundle; files appear under their names only when complete. `started(offset,
    total)` is told where writing begins (a resumed run does not start at 0)."""
    layout = build_layout(plan)
    out = BundleOutput(path, layout, split)
    try:
        start = out.start()
        if started is not None:
            started(start, layout.total)
        write_layout(layout, view.tier.path, out, start, progress)
        out.finish()
    except LayoutError as e:
        raise BundleError(str(e)) from None
    finally:
        out.close()  # after a failure the partial file and its state stay, for the next run
    return ExportResult(out.all_parts(), layout.total, start)
