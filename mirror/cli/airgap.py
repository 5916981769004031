"""The air-gap commands: `mirror seed` here; `mirror export`, `mirror import` and `mirror
inventory` in transfer.py (main.py registers both).

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


IMAGES_HELP = ("image references as you would pull them: nginx:1.27, "
               "ghcr.io/org/app@sha256:..., ghcr.io/org/app:v1.* (glob over the tags), "
               "'ghcr.io/org/app:>=1.2,<2' (semver range)")


def add_airgap_commands(sub: SubParsers, config_arg: Callable[[argparse.ArgumentParser], None],
                        load: Loader) -> None:
    images_help = IMAGES_HELP
    s = sub.add_parser(
        "seed", help="fill the cache with images before anyone pulls them",
        description="Fetch whole images (index, every platform or --platform, configs, layers) "
                    "into the cache. Content already cached is skipped, so an interrupted seed "
                    "is simply run again. Standalone it opens the cache of the config (do not "
                    "run it beside a mirror serving the same cache: use --url). Exit 1 if "
                    "anything failed.")
    config_arg(s)
    refs_args(s, images_help)
    s.add_argument("--url", metavar="URL",
                   help="seed through the mirror running at URL instead of opening the cache")
    s.add_argument("--with-referrers", action="store_true",
                   help="also fetch signatures, SBOMs and other referrers of each manifest")
    s.add_argument("--parallel", type=int, default=4, metavar="N", help="blobs fetched at once")
    s.set_defaults(func=lambda a: cmd_seed(a, load(a.config)))


def refs_args(p: argparse.ArgumentParser, images_help: str) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help=images_help)
    p.add_argument("-f", "--file", metavar="LIST",
                   help="read references from LIST, one per line, # comments ('-': stdin)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT],...",
                   help="only these platforms of multi-platform images (default: all)")


def lock_cache_dir(config: Config, tool: str, alternative: str = "") -> CacheDirLock | Literal[False]:
    """The cache directory to ourselves (it is swept and written), or False after saying who
    holds it."""
    try:
        return CacheDirLock.exclusive(config.cache.dir, tool, alternative)
    except CacheDirBusy as e:
        fail(str(e))
        return False


def fail(message: str) -> None:
    print(f"mirror: {message}", file=sys.stderr)


def _reference_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.images)
    if args.file:
        lines = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        texts += [ln.strip() for ln in lines.splitlines()
                  if ln.strip() and not ln.strip().startswith("#")]
    return texts


def parse_common(args: argparse.Namespace, config: Config,
                  any_registry: bool = False) -> tuple[list[ImageRef], tuple[Platform, ...]] | None:
    """References and platforms, or None after printing every problem."""
    from mirror.airgap.seed import parse_platforms

    problems: list[str] = []
    try:
        texts = _reference_texts(args)
    except OSError as e:
        fail(f"cannot read {args.file}: {e.strerror}")
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
        fail(p)
    return None if problems else (refs, platforms)


# -- seed -------------------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.progress import BarReporter, LineReporter, summary_lines
    from mirror.airgap.seed import SeedOptions
    from mirror.observe.log import setup_logging

    if not args.url and config.offline:
        fail("the config says offline: true, so there is no upstream to seed from "
              "(use --url, or `mirror import` a bundle)")
        return EXIT_USAGE
    parsed = parse_common(args, config, any_registry=bool(args.url))
    if parsed is None:
        return EXIT_USAGE
    if args.parallel < 1:
        fail("--parallel must be at least 1")
        return EXIT_USAGE
    refs, platforms = parsed
    setup_logging("warning", config.log.format)
    options = SeedOptions(platforms, args.with_referrers, args.parallel)
    # With --url the server writes its own cache; else the cache directory is ours alone.
    dirlock = None if args.url else lock_cache_dir(config, "mirror seed", ", or seed through it with --url")
    if dirlock is False:
        return EXIT_FAILED
    reporter: BarReporter | LineReporter = (
        BarReporter(sys.stderr) if sys.stderr.isatty() else LineReporter(sys.stdout))
    t0 = time.monotonic()
    try:
        summary = asyncio.run(_seed(config, args.url, refs, options, reporter))
    except KeyboardInterrupt:
        reporter.close()
        fail("seed interrupted; run the same command again to resume (cached content is "
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
