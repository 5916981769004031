"""The air-gap commands: `mirror seed`, `mirror export`, `mirror import` (registered by cli.py).

Exit codes: 0 everything done; 1 something failed (named on stderr or in the summary);
2 the command line or the config is unusable."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from mirror.config import Config
from mirror.oci.imageref import ImageRef, ImageRefError, parse_image_ref
from mirror.oci.models import Platform
from mirror.store.dirlock import CacheDirBusy, CacheDirLock

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # like a shell after SIGINT

Loader = Callable[[str | None], Config]
SubParsers = Any  # argparse's _SubParsersAction is private


def add_airgap_commands(sub: SubParsers, config_arg: Callable[[argparse.ArgumentParser], None],
                        load: Loader) -> None:
    images_help = ("image references as you would pull them: nginx:1.27, "
                   "ghcr.io/org/app@sha256:..., ghcr.io/org/app:v1.* (glob over the tags), "
                   "'ghcr.io/org/app:>=1.2,<2' (semver range)")
    s = sub.add_parser(
        "seed", help="fill the cache with images before anyone pulls them",
        description="Fetch whole images (index, every platform or --platform, configs, layers) "
                    "into the cache. Content already cached is skipped, so an interrupted seed "
                    "is simply run again. Standalone it opens the cache of the config (do not "
                    "run it beside a mirror serving the same cache: use --url). Exit 1 if "
                    "anything failed.")
    config_arg(s)
    _refs_args(s, images_help)
    s.add_argument("--url", metavar="URL",
                   help="seed through the mirror running at URL instead of opening the cache")
    s.add_argument("--with-referrers", action="store_true",
                   help="also fetch signatures, SBOMs and other referrers of each manifest")
    s.add_argument("--parallel", type=int, default=4, metavar="N", help="blobs fetched at once")
    s.set_defaults(func=lambda a: cmd_seed(a, load(a.config)))

    e = sub.add_parser(
        "export", help="write cached images to one OCI-layout bundle (tar)",
        description="Write images from the cache (never from an upstream) into one tar file in "
                    "the OCI image layout, each named by its full reference. Readable by "
                    "`mirror import` and by other tools (skopeo copy oci-archive:BUNDLE:REF).")
    config_arg(e)
    e.add_argument("-o", "--output", required=True, metavar="BUNDLE",
                   help="bundle file to write ('-' for stdout)")
    _refs_args(e, images_help + "; patterns match the tags in the cache")
    e.add_argument("--with-referrers", action="store_true",
                   help="include cached referrer tags (sha256-<hex>, cosign .sig/.att/.sbom)")
    e.set_defaults(func=lambda a: cmd_export(a, load(a.config)))

    i = sub.add_parser(
        "import", help="verify a bundle and add it to the cache",
        description="Verify every blob of an OCI-layout bundle (tar file, or a directory made "
                    "by `skopeo copy ... oci:DIR`) and add it to the cache with its tags, so a "
                    "mirror with `offline: true` serves them. A bundle with any corrupt or "
                    "missing blob is refused whole. Restart a mirror serving this cache "
                    "afterwards.")
    config_arg(i)
    i.add_argument("bundle", metavar="BUNDLE", help="bundle file or OCI layout directory")
    i.add_argument("--repo", metavar="REGISTRY/REPOSITORY",
                   help="repository for entries named only by a tag (ref.name `v1`)")
    i.set_defaults(func=lambda a: cmd_import(a, load(a.config)))


def _refs_args(p: argparse.ArgumentParser, images_help: str) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help=images_help)
    p.add_argument("-f", "--file", metavar="LIST",
                   help="read references from LIST, one per line, # comments ('-': stdin)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT],...",
                   help="only these platforms of multi-platform images (default: all)")


def _lock(config: Config, tool: str, alternative: str = "") -> CacheDirLock | Literal[False]:
    """The cache directory to ourselves (it is swept and written), or False after saying who
    holds it."""
    try:
        return CacheDirLock.exclusive(config.cache.dir, tool, alternative)
    except CacheDirBusy as e:
        _fail(str(e))
        return False


def _fail(message: str) -> None:
    print(f"mirror: {message}", file=sys.stderr)


def _reference_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.images)
    if args.file:
        lines = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        texts += [ln.strip() for ln in lines.splitlines()
                  if ln.strip() and not ln.strip().startswith("#")]
    return texts


def _parse_common(args: argparse.Namespace, config: Config,
                  any_registry: bool = False) -> tuple[list[ImageRef], tuple[Platform, ...]] | None:
    """References and platforms, or None after printing every problem."""
    from mirror.airgap.seed import parse_platforms

    problems: list[str] = []
    try:
        texts = _reference_texts(args)
    except OSError as e:
        _fail(f"cannot read {args.file}: {e.strerror}")
        return None
    if not texts:
        problems.append("no images given (IMAGE arguments or -f LIST)")
    aliases = config.alias_table()
    refs: list[ImageRef] = []
    for text in texts:
        try:
            refs.append(parse_image_ref(text, aliases, config.default_upstream,
                                        allow_unknown_registry=any_registry))
        except ImageRefError as e:
            problems.append(str(e))
    platforms: tuple[Platform, ...] = ()
    try:
        platforms = parse_platforms(args.platform or "")
    except ValueError as e:
        problems.append(f"--platform: {e}")
    for p in problems:
        _fail(p)
    return None if problems else (refs, platforms)


# -- seed -------------------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.progress import BarReporter, LineReporter, summary_lines
    from mirror.airgap.seed import SeedOptions
    from mirror.observe.log import setup_logging

    if not args.url and config.offline:
        _fail("the config says offline: true, so there is no upstream to seed from "
              "(use --url, or `mirror import` a bundle)")
        return EXIT_USAGE
    parsed = _parse_common(args, config, any_registry=bool(args.url))
    if parsed is None:
        return EXIT_USAGE
    if args.parallel < 1:
        _fail("--parallel must be at least 1")
        return EXIT_USAGE
    refs, platforms = parsed
    setup_logging("warning", config.log.format)
    options = SeedOptions(platforms, args.with_referrers, args.parallel)
    # With --url the server writes its own cache; else the cache directory is ours alone.
    dirlock = None if args.url else _lock(config, "mirror seed", ", or seed through it with --url")
    if dirlock is False:
        return EXIT_FAILED
    reporter: BarReporter | LineReporter = (
        BarReporter(sys.stderr) if sys.stderr.isatty() else LineReporter(sys.stdout))
    t0 = time.monotonic()
    try:
        summary = asyncio.run(_seed(config, args.url, refs, options, reporter))
    except KeyboardInterrupt:
        reporter.close()
        _fail("seed interrupted; run the same command again to resume (cached content is "
              "skipped)")
        return EXIT_INTERRUPTED
    finally:
        reporter.close()
        if dirlock:
            dirlock.release()
    for line in summary_lines(summary, time.monotonic() - t0):
        print(line, flush=True)
    return 0 if summary.ok else EXIT_FAILED


async def _seed(config: Config, url: str | None, refs: list[ImageRef], options: Any,
                reporter: Any) -> Any:
    import aiohttp

    from mirror.airgap.seed import Seeder, ServiceSource
    from mirror.airgap.seed_http import HttpSource
    from mirror.observe.metrics import Metrics
    from mirror.pull.stack import build_services

    if url:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            return await Seeder(HttpSource(url, session), options, reporter).run(refs)
    parts = await build_services(config, Metrics())
    try:
        return await Seeder(ServiceSource(parts.service), options, reporter).run(refs)
    finally:
        await parts.close()


# -- export -----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.bundle import BundleError, CacheView, export_to_path, plan_export, write_bundle
    from mirror.airgap.progress import BarReporter, human_bytes
    from mirror.observe.metrics import Metrics
    from mirror.store.db import Database
    from mirror.store.disk import DiskTier
    from mirror.store.index import TagIndex

    parsed = _parse_common(args, config)
    if parsed is None:
        return EXIT_USAGE
    refs, platforms = parsed
    if not (config.cache.dir / "index.db").is_file():
        _fail(f"no cache at {config.cache.dir} (cache.dir): nothing to export")
        return EXIT_FAILED
    t0 = time.monotonic()
    db = Database(config.cache.dir / "index.db")
    try:
        tier = DiskTier(config.cache.dir, db, config.cache.max_size, Metrics())
        view = CacheView(tier, TagIndex(db), db)
        plan = plan_export(view, refs, platforms, args.with_referrers)
        for note in plan.notes:
            print(f"mirror: note: {note}", file=sys.stderr)
        if plan.problems:
            for problem in plan.problems:
                _fail(f"export: {problem}")
            _fail("export: nothing written")
            return EXIT_FAILED
        bar = BarReporter(sys.stderr) if sys.stderr.isatty() and args.output != "-" else None
        if bar is not None:
            bar.total(plan.total_bytes)
        try:
            if args.output == "-":
                write_bundle(view, plan, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                export_to_path(view, plan, Path(args.output), bar.advance if bar else None)
        except BundleError as e:
            _fail(f"export: {e}")
            return EXIT_FAILED
        except OSError as e:
            _fail(f"export: cannot write {args.output}: {e.strerror or e}")
            return EXIT_FAILED
        finally:
            if bar is not None:
                bar.close()
    finally:
        db.close_sync()
    out = sys.stderr if args.output == "-" else sys.stdout
    for img in plan.images:
        print(f"exported {img.ref} {img.digest}", file=out)
    print(f"export: {len(plan.images)} images, {len(plan.blobs)} blobs "
          f"({human_bytes(plan.total_bytes)}) to {args.output} in {time.monotonic() - t0:.1f}s",
          file=out)
    return 0


# -- import -----------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.bundle import BundleError
    from mirror.airgap.progress import human_bytes
    from mirror.observe.log import setup_logging

    setup_logging("warning", config.log.format)
    t0 = time.monotonic()
    dirlock = _lock(config, "mirror import")
    if dirlock is False:
        return EXIT_FAILED
    try:
        report = asyncio.run(_import(config, Path(args.bundle), args.repo))
    except KeyboardInterrupt:
        _fail("import interrupted: nothing was imported (staged files go at the next start)")
        return EXIT_INTERRUPTED
    except BundleError as e:
        _fail(f"import refused: {e}")
        return EXIT_FAILED
    except OSError as e:
        _fail(f"import failed: {e}")
        return EXIT_FAILED
    finally:
        dirlock.release()
    for ref, digest in report.tags:
        print(f"imported {ref} {digest}")
    for line in report.kept_newer:
        print(f"kept newer tag record: {line}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"import: {len(report.tags)} tags, {report.blobs_new} new blobs "
          f"({human_bytes(report.bytes_new)}), {report.blobs_present} already cached; all "
          f"verified; {time.monotonic() - t0:.1f}s. Restart a mirror serving "
          f"{config.cache.dir} to serve them.")
    return 0


async def _import(config: Config, source: Path, repo: str | None) -> Any:
    from mirror.airgap.bundle_import import import_layout
    from mirror.observe.metrics import Metrics
    from mirror.pull.stack import build_services

    parts = await build_services(config, Metrics())
    try:
        return await import_layout(source, parts.tier, parts.tags, config.alias_table(),
                                   config.default_upstream, repo)
    finally:
        await parts.close()
