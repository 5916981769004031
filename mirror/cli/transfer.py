"""`mirror export`, `mirror import` and `mirror inventory`: carrying a cache's content to an
air-gapped site, in full or (with the site's inventory) only what changed since last time.

Exit codes as for the other air-gap commands (airgap.py): 0 done, 1 failed, 2 unusable
command line, config or inventory, 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirror.cli.airgap import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Loader,
    SubParsers,
    fail,
    lock_cache_dir,
    parse_common,
    refs_args,
)
from mirror.config import Config, parse_size

PASSWORD_ENV = "MIRROR_PASSWORD"  # never on the command line, where `ps` shows it


def add_transfer_commands(sub: SubParsers, config_arg: Callable[[argparse.ArgumentParser], None],
                          load: Loader, images_help: str) -> None:
    e = sub.add_parser(
        "export", help="write cached images to one OCI-layout bundle (tar), or parts of one",
        description="Write images from the cache (never from an upstream) into one tar file in "
                    "the OCI image layout, each named by its full reference. Readable by "
                    "`mirror import` and by other tools (skopeo copy oci-archive:BUNDLE:REF). "
                    "With --have, leave out what the far site's inventory lists; with --split, "
                    "write parts of at most SIZE. An interrupted export, run again, continues "
                    "where it stopped.")
    config_arg(e)
    e.add_argument("-o", "--output", required=True, metavar="BUNDLE",
                   help="bundle file to write ('-' for stdout)")
    refs_args(e, images_help + "; patterns match the tags in the cache")
    e.add_argument("--with-referrers", action="store_true",
                   help="include cached referrer tags (sha256-<hex>, cosign .sig/.att/.sbom)")
    e.add_argument("--have", action="append", default=[], metavar="INVENTORY",
                   help="inventory of the importing site (`mirror inventory`); every blob and "
                        "manifest it lists is left out (repeatable)")
    e.add_argument("--split", metavar="SIZE",
                   help="write parts BUNDLE.000, BUNDLE.001, ... of at most SIZE each "
                        "(100MiB, 4GiB)")
    e.set_defaults(func=lambda a: cmd_export(a, load(a.config)))

    i = sub.add_parser(
        "import", help="verify a bundle (or its parts) and add it to the cache",
        description="Verify every blob of an OCI-layout bundle (tar file, the parts of a split "
                    "bundle, or a directory made by `skopeo copy ... oci:DIR`) and add it to the "
                    "cache with its tags, so a mirror with `offline: true` serves them. A bundle "
                    "with any corrupt or missing blob or part, or a differential bundle whose "
                    "base this cache lacks, is refused whole. An interrupted import, run again, "
                    "keeps the blobs it verified. With `signatures` rules in the config, each "
                    "imported image is judged by this site's rules (signatures travel in bundles "
                    "exported --with-referrers) and the verdict printed: a refused image is kept "
                    "but never served. Restart a mirror serving this cache afterwards.")
    config_arg(i)
    i.add_argument("bundle", nargs="+", metavar="BUNDLE",
                   help="bundle file, OCI layout directory, or parts of a split bundle (the "
                        "first part is enough: the others are found beside it)")
    i.add_argument("--repo", metavar="REGISTRY/REPOSITORY",
                   help="repository for entries named only by a tag (ref.name `v1`)")
    i.set_defaults(func=lambda a: cmd_import(a, load(a.config)))

    v = sub.add_parser(
        "inventory", help="list what this cache holds, for differential exports",
        description="Write what the cache holds (digests of blobs and manifests, tags with "
                    "their digests, the mirror version) as a small JSON file. Carry it to the "
                    "connected side and give it to `mirror export --have`, which then leaves "
                    "all of that out. Reads the cache directory of the config (safe beside a "
                    "running mirror), or asks the mirror at --url.")
    config_arg(v)
    v.add_argument("-o", "--output", default="-", metavar="FILE",
                   help="inventory file to write (default '-': stdout)")
    v.add_argument("--url", metavar="URL",
                   help="ask the mirror running at URL (its /inventory.json) instead of reading "
                        "the cache directory")
    v.add_argument("--user", metavar="USER",
                   help=f"log in to --url as USER (password from ${PASSWORD_ENV}), when "
                        f"auth.protect_status is on")
    v.set_defaults(func=lambda a: cmd_inventory(a, load(a.config)))


# -- export -----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.bundle import BundleError, CacheView, plan_export, write_bundle
    from mirror.airgap.export import ExportResult, export_to_path
    from mirror.airgap.inventory import InventoryError
    from mirror.airgap.inventory import load as load_inventory
    from mirror.airgap.progress import BarReporter, human_bytes
    from mirror.observe.metrics import Metrics
    from mirror.store.db import Database
    from mirror.store.disk import DiskTier
    from mirror.store.index import TagIndex

    parsed = parse_common(args, config)
    if parsed is None:
        return EXIT_USAGE
    refs, platforms = parsed
    split: int | None = None
    try:
        split = parse_size(args.split) if args.split else None
        have: set[str] = set()
        for path in args.have:
            have |= load_inventory(Path(path)).digests
    except ValueError as err:
        fail(f"--split: {err}")
        return EXIT_USAGE
    except InventoryError as err:
        fail(f"--have: {err}")
        return EXIT_USAGE
    if split is not None and args.output == "-":
        fail("--split writes files: give -o BUNDLE, not -o -")
        return EXIT_USAGE
    if not (config.cache.dir / "index.db").is_file():
        fail(f"no cache at {config.cache.dir} (cache.dir): nothing to export")
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
                fail(f"export: {problem}")
            fail("export: nothing written")
            return EXIT_FAILED
        plan.leave_out(have)
        bar = BarReporter(sys.stderr) if sys.stderr.isatty() and args.output != "-" else None

        def started(offset: int, total: int) -> None:
            if bar is not None:
                bar.total(total)
                bar.advance(offset)

        result = ExportResult()
        try:
            if args.output == "-":
                write_bundle(view, plan, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                result = export_to_path(view, plan, Path(args.output), split,
                                        bar.advance if bar else None, started)
        except BundleError as err:
            fail(f"export: {err}")
            return EXIT_FAILED
        except OSError as err:
            fail(f"export: cannot write {args.output}: {err.strerror or err}; run the same "
                 f"command again to continue")
            return EXIT_FAILED
        except KeyboardInterrupt:
            fail("export interrupted; run the same command again to continue where it stopped")
            return EXIT_INTERRUPTED
        finally:
            if bar is not None:
                bar.close()
    finally:
        db.close_sync()
    out = sys.stderr if args.output == "-" else sys.stdout
    for img in plan.images:
        print(f"exported {img.ref} {img.digest}", file=out)
    if result.resumed_from:
        print(f"export: resumed an interrupted export at {human_bytes(result.resumed_from)} of "
              f"{human_bytes(result.stream_bytes)}", file=out)
    where = args.output
    if split is not None:
        names = [p.name for p in result.outputs]
        where = (f"{len(names)} part{'s' if len(names) > 1 else ''} of at most "
                 f"{human_bytes(split)} ({names[0]}{' ... ' + names[-1] if len(names) > 1 else ''})")
    left_out = (f"; {len(plan.left_out)} blobs left out as already present "
                f"({human_bytes(plan.left_out_bytes)})" if args.have else "")
    print(f"export: {len(plan.images)} images, {len(plan.blobs)} blobs "
          f"({human_bytes(plan.total_bytes)}) to {where}{left_out}; "
          f"{time.monotonic() - t0:.1f}s", file=out)
    return 0


# -- import -----------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.bundle import BundleError
    from mirror.airgap.progress import human_bytes
    from mirror.observe.log import setup_logging

    setup_logging("warning", config.log.format)
    t0 = time.monotonic()
    dirlock = lock_cache_dir(config, "mirror import")
    if dirlock is False:
        return EXIT_FAILED
    try:
        report = asyncio.run(_import(config, [Path(b) for b in args.bundle], args.repo))
    except KeyboardInterrupt:
        fail("import interrupted: nothing was imported; run it again to continue (verified "
             "blobs are kept)")
        return EXIT_INTERRUPTED
    except BundleError as e:
        fail(f"import refused: {e}")
        return EXIT_FAILED
    except OSError as e:
        fail(f"import failed: {e}; nothing was imported; run it again to continue (verified "
             f"blobs are kept)")
        return EXIT_FAILED
    finally:
        dirlock.release()
    for ref, digest in report.tags:
        print(f"imported {ref} {digest}")
    for line in report.kept_newer:
        print(f"kept newer tag record: {line}")
    for note in report.notes:
        print(f"note: {note}")
    if report.blobs_resumed:
        print(f"import: resumed: {report.blobs_resumed} blobs verified by an interrupted import "
              f"were taken as they were")
    differential = ""
    if report.expected:
        differential = (f"; differential bundle: {report.expected} blobs left out "
                        f"({human_bytes(report.expected_bytes)}) verified present here")
    print(f"import: {len(report.tags)} tags, {report.blobs_new} new blobs "
          f"({human_bytes(report.bytes_new)}), {report.blobs_present} already cached; all "
          f"verified{differential}; {time.monotonic() - t0:.1f}s. Restart a mirror serving "
          f"{config.cache.dir} to serve them.")
    return 0


async def _import(config: Config, sources: list[Path], repo: str | None) -> Any:
    from mirror.airgap.bundle_import import import_layout
    from mirror.airgap.progress import BarReporter
    from mirror.airgap.staging import open_source
    from mirror.observe.metrics import Metrics
    from mirror.pull.stack import build_services

    source = open_source(sources)  # a missing part is named before the cache is opened
    bar = BarReporter(sys.stderr) if sys.stderr.isatty() else None
    if bar is not None:
        bar.total(source.size)
    parts = await build_services(config, Metrics())
    try:
        report = await import_layout(source, parts.tier, parts.tags, config.alias_table(),
                                     config.default_upstream, repo, bar.advance if bar else None)
        policy = parts.service.signatures
        if policy is not None:
            # The importing site's rules, judged on what the bundle brought (its signatures
            # travel in it with --with-referrers); a refused image stays cached, never served.
            for ref, digest in report.tags:
                m = parts.service.manifests.cached(digest)
                line = await policy.describe(ref.upstream, ref.repo, m) if m is not None else None
                if line is not None:
                    report.notes.append(f"signatures: {ref}: {line}")
        return report
    finally:
        if bar is not None:
            bar.close()
        await parts.close()


# -- inventory --------------------------------------------------------------------------------


def _fetch_inventory(url: str, user: str | None) -> bytes:
    headers = {"Accept": "application/json"}
    if user:
        token = base64.b64encode(f"{user}:{os.environ.get(PASSWORD_ENV, '')}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url.rstrip("/") + "/inventory.json", headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return bytes(resp.read())


def cmd_inventory(args: argparse.Namespace, config: Config) -> int:
    from mirror.airgap.inventory import InventoryError, from_cache_dir, parse

    try:
        if args.url:
            try:
                inventory = parse(_fetch_inventory(args.url, args.user), f"{args.url}/inventory.json")
            except urllib.error.HTTPError as e:
                hint = (f" (log in: --user USER, password in ${PASSWORD_ENV})"
                        if e.code == 401 else "")
                raise InventoryError(f"{args.url}/inventory.json answered {e.code}{hint}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise InventoryError(f"cannot reach {args.url}: {reason}") from None
            where = args.url
        else:
            inventory = from_cache_dir(config.cache.dir)
            where = str(config.cache.dir)
    except InventoryError as e:
        fail(f"inventory: {e}")
        return EXIT_FAILED
    data = inventory.dumps()
    try:
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            out = Path(args.output)
            temp = out.with_name(f".{out.name}.partial")
            temp.write_bytes(data)
            os.replace(temp, out)
    except OSError as e:
        fail(f"inventory: cannot write {args.output}: {e.strerror or e}")
        return EXIT_FAILED
    print(f"inventory: {len(inventory.manifests)} manifests, {len(inventory.blobs)} blobs, "
          f"{len(inventory.tags)} tags from {where}"
          f"{'' if args.output == '-' else ' to ' + args.output}", file=sys.stderr)
    return 0
