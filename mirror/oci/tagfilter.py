"""Tag filters for seed and warm rules: shell globs (`v1.*`) and semver ranges (`^1.2`,
`>=1.2,<2`). Pure functions; the caller supplies the upstream's tag list.

A tag part containing `*`, `?` or `[` is a glob; one containing `<`, `>`, `=`, `^`, `~`, a space
or a comma is a semver range. None of those characters may appear in a real tag, so a pattern
can never be mistaken for a tag."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

GLOB_CHARS = frozenset("*?[")
RANGE_CHARS = frozenset("<>=^~ ,")

# Lenient semver as registries use it: optional "v", minor and patch may be missing
# (`1.27`, `v2`), an optional pre-release after "-", build metadata after "+" ignored.
_VERSION_RE = re.compile(
    r"^v?(?P<major>0|[1-9][0-9]*)(?:\.(?P<minor>0|[1-9][0-9]*))?(?:\.(?P<patch>0|[1-9][0-9]*))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_COMPARATOR_RE = re.compile(r"^(?P<op>>=|<=|>|<|=|\^|~)?(?P<version>v?[0-9][0-9A-Za-z.+-]*)$")


@dataclass(frozen=True, order=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    # A release sorts after its pre-releases: (1, ()) > (0, ...). Identifiers are (0, number)
    # or (1, text), so numbers sort before words and an int is never compared with a str.
    pre: tuple[int, tuple[tuple[int, int | str], ...]]

    @property
    def is_prerelease(self) -> bool:
        return self.pre[0] == 0


def parse_version(tag: str) -> tuple[Version, int] | None:
    """(version, number of components the tag spelled out), or None if the tag is no version."""
    m = _VERSION_RE.match(tag)
    if m is None:
        return None
    parts = 1 + (m.group("minor") is not None) + (m.group("patch") is not None)
    pre_text = m.group("pre")
    pre: tuple[int, tuple[tuple[int, int | str], ...]] = (1, ())
    if pre_text:
        pre = (0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre_text.split(".")))
    return Version(int(m.group("major")), int(m.group("minor") or 0), int(m.group("patch") or 0),
                   pre), parts


Op = Literal[">=", "<=", ">", "<", "="]


@dataclass(frozen=True, slots=True)
class Comparator:
    op: Op
    version: Version

    def allows(self, v: Version) -> bool:
        if self.op == ">=":
            return v >= self.version
        if self.op == "<=":
            return v <= self.version
        if self.op == ">":
            return v > self.version
        if self.op == "<":
            return v < self.version
        return v == self.version


def _release(major: int, minor: int = 0, patch: int = 0) -> Version:
    return Version(major, minor, patch, (1, ()))


def _lowest(major: int, minor: int = 0, patch: int = 0) -> Version:
    # The smallest version of a release line, below its pre-releases: `<2` excludes 2.0.0-rc1.
    return Version(major, minor, patch, (0, ()))


def _expand(op: str, text: str) -> list[Comparator]:
    parsed = parse_version(text)
    if parsed is None:
        raise ValueError(f"{text!r} is not a version")
    v, parts = parsed
    if op == "^":  # same leftmost non-zero component
        if v.major > 0 or parts == 1:
            upper = _lowest(v.major + 1)
        elif v.minor > 0 or parts == 2:
            upper = _lowest(0, v.minor + 1)
        else:
            upper = _lowest(0, 0, v.patch + 1)
        return [Comparator(">=", v), Comparator("<", upper)]
    if op == "~":  # patch updates (minor updates when only the major is given)
        upper = _lowest(v.major + 1) if parts == 1 else _lowest(v.major, v.minor + 1)
        return [Comparator(">=", v), Comparator("<", upper)]
    if op in ("", "="):
        if parts == 3 or v.is_prerelease:
            return [Comparator("=", v)]
        # `=1.2` means the whole 1.2 line, like npm's `1.2.x`.
        upper = _lowest(v.major + 1) if parts == 1 else _lowest(v.major, v.minor + 1)
        return [Comparator(">=", v), Comparator("<", upper)]
    return [Comparator(op, v)]  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TagPattern:
    """A glob or a semver range over tag names."""

    text: str
    kind: Literal["glob", "semver"]
    comparators: tuple[Comparator, ...] = ()
    prerelease: bool = False  # the range itself names a pre-release version

    def matches(self, tag: str) -> bool:
        if self.kind == "glob":
            return fnmatch.fnmatchcase(tag, self.text)
        parsed = parse_version(tag)
        if parsed is None:
            return False
        v = parsed[0]
        # Like npm: pre-releases only match a range that names a pre-release itself.
        if v.is_prerelease and not self.prerelease:
            return False
        return all(c.allows(v) for c in self.comparators)

    def select(self, tags: list[str]) -> list[str]:
        """Matching tags: versions in ascending order for a range, sorted names for a glob."""
        hits = [t for t in tags if self.matches(t)]
        if self.kind == "semver":
            return sorted(hits, key=lambda t: (parse_version(t) or (_release(0), 0))[0])
        return sorted(hits)


def is_pattern(text: str) -> bool:
    return any(c in GLOB_CHARS or c in RANGE_CHARS for c in text)


def parse_tag_pattern(text: str) -> TagPattern:
    """A TagPattern from the tag part of an image reference; ValueError names the problem."""
    if not text or len(text) > 256:
        raise ValueError("empty or overlong tag pattern")
    if any(c in RANGE_CHARS for c in text):
        comparators: list[Comparator] = []
        prerelease = False
        for part in re.split(r"[\s,]+", text.strip()):
            if not part:
                continue
            m = _COMPARATOR_RE.match(part)
            if m is None:
                raise ValueError(f"invalid semver comparator {part!r} in {text!r}")
            comparators += _expand(m.group("op") or "", m.group("version"))
            prerelease = prerelease or "-" in m.group("version").split("+", 1)[0]
        if not comparators:
            raise ValueError(f"empty semver range {text!r}")
        return TagPattern(text, "semver", tuple(comparators), prerelease)
    if not any(c in GLOB_CHARS for c in text):
        raise ValueError(f"{text!r} is a plain tag, not a pattern")
    if not re.fullmatch(r"[A-Za-z0-9_.*?\[\]!-]+", text):
        raise ValueError(f"invalid tag glob {text!r}")
    return TagPattern(text, "glob")
