"""Serve only what is signed: the `signatures` rules, applied to every manifest the pull
service answers (PullService.manifest), before it is returned and before any prefetch, so the
blobs of a refused image are never fetched.

For a manifest of a repository a rule matches (first match decides; no match: served as
always):
- a signature artifact itself (cosign `.sig`, a sigstore bundle, an attestation) is served: it
  describes an image and has nothing to run;
- otherwise the verdict for (digest, rule keys) is looked up (memory, then the index database);
  without one the signatures are fetched through the same caches as any pull: the cosign tag
  `sha256-<hex>.sig` (by the tag resolver) with its payload blobs, then sigstore bundles found
  through the referrers API or its `sha256-<hex>` tag fallback, and verified with the rule's
  keys (mirror/oci/cosign.py);
- a signed index vouches for its children (their verdicts are stored with it); an index
  without a valid signature is served, and each child is checked on its own when a client asks
  for it, so a refused child is what the client sees;
- enforce: an image manifest without a valid signature is refused (403 DENIED naming the rule
  and the reason); warn: served, counted, logged and audited.

Verified verdicts are kept until the rule's keys change. Refusals are re-evaluated after
cache.tag_ttl (a signature may be pushed after the image), but a refusal that cannot be
re-evaluated (upstream down, offline) still holds: the mirror fails closed."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mirror.config import Config, SignatureRule, load_config
from mirror.fetch.blobs import BlobFetcher, Download, Uncached
from mirror.fetch.coalesce import SingleFlight
from mirror.observe.audit import AuditLog
from mirror.observe.metrics import Metrics
from mirror.oci import cosign
from mirror.oci.errors import (
    ConfigError,
    Denied,
    ManifestUnknown,
    MirrorError,
    UpstreamUnavailable,
)
from mirror.oci.globs import glob_regex
from mirror.oci.models import INDEX_TYPES, Digest, parse_manifest
from mirror.pull.manifests import ClientFor, Manifest, ManifestStore
from mirror.pull.tags import TagResolver
from mirror.store.verdicts import Verdict, VerdictStore

log = logging.getLogger("mirror.pull.signatures")
RECENT = 20  # refusals kept for the status page


@dataclass(frozen=True, slots=True)
class Refusal:
    time: float
    upstream: str
    repo: str
    digest: str
    rule: str
    mode: str
    reason: str


class _Compiled:
    __slots__ = ("repos", "rule", "upstreams")

    def __init__(self, rule: SignatureRule) -> None:
        self.rule = rule
        self.upstreams = [glob_regex(p) for p in rule.upstreams]
        self.repos = [glob_regex(p) for p in rule.repositories]

    def matches(self, upstream: str, repo: str) -> bool:
        return (any(p.fullmatch(upstream) for p in self.upstreams)
                and any(p.fullmatch(repo) for p in self.repos))


class SignaturePolicy:
    def __init__(self, config: Config, verdicts: VerdictStore, manifests: ManifestStore,
                 tags: TagResolver, blobs: BlobFetcher, client_for: ClientFor, metrics: Metrics,
                 audit: AuditLog | None = None) -> None:
        self.verdicts = verdicts
        self.manifests = manifests
        self.tags = tags
        self.blobs = blobs
        self.client_for = client_for
        self.metrics = metrics
        self.audit = audit
        self.refusal_ttl = config.cache.tag_ttl
        self._source = config.source  # re-read on SIGHUP (reload) when it is a file
        self._rules = [_Compiled(r) for r in config.signatures]
        self._checks: SingleFlight[tuple[str, str], Verdict] = SingleFlight()
        self.recent: deque[Refusal] = deque(maxlen=RECENT)

    @property
    def rules(self) -> list[SignatureRule]:
        return [c.rule for c in self._rules]

    def rule_for(self, upstream: str, repo: str) -> SignatureRule | None:
        return next((c.rule for c in self._rules if c.matches(upstream, repo)), None)

    def reload(self) -> None:
        """SIGHUP: take the `signatures` rules (and key files) from the config file again. The
        verdicts of changed keys no longer match (mirror/store/verdicts.py); a config that
        does not load keeps the rules in force."""
        if not Path(self._source).is_file():
            return
        try:
            config = load_config(self._source)
        except ConfigError as e:
            log.error("signatures not reloaded, the config has problems: %s", "; ".join(e.problems))
            return
        self._rules = [_Compiled(r) for r in config.signatures]
        log.info("signatures reloaded: %d rules", len(self._rules))

    # -- the decision ---------------------------------------------------------------------

    async def admit(self, upstream: str, repo: str, m: Manifest) -> None:
        """Raise Denied for a manifest the rules refuse (enforce); count and audit the rest."""
        rule = self.rule_for(upstream, repo)
        if rule is None or cosign.is_signature_artifact(m.body):
            return
        verdict = await self.verdict(rule, upstream, repo, m)
        if verdict is None:  # an index without a signature: its children are checked
            return
        if verdict.outcome == "verified":
            self.metrics.signature_checks.labels(rule.name, "verified").inc()
            return
        outcome: Literal["refused", "warn"] = "refused" if rule.mode == "enforce" else "warn"
        self.metrics.signature_checks.labels(rule.name, outcome).inc()
        self._record(Refusal(time.time(), upstream, repo, str(m.digest), rule.name, rule.mode,
                             verdict.reason))
        if outcome == "warn":
            log.warning("signatures: %s/%s@%s would be refused by %s: %s", upstream, repo,
                        m.digest, rule.name, verdict.reason)
            return
        raise Denied(f"{repo}@{m.digest} is refused by signature rule {rule.name}: "
                     f"{verdict.reason}")

    async def permits(self, upstream: str, repo: str, m: Manifest) -> bool:
        """For prefetch: would admit() serve it? Nothing counted, nothing audited."""
        rule = self.rule_for(upstream, repo)
        if rule is None or rule.mode == "warn" or cosign.is_signature_artifact(m.body):
            return True
        try:
            verdict = await self.verdict(rule, upstream, repo, m)
        except MirrorError:
            return False
        return verdict is None or verdict.outcome == "verified"

    async def describe(self, upstream: str, repo: str, m: Manifest) -> str | None:
        """One line on what the rules make of `m` (for `mirror import`); None: no rule applies.
        The verdict is stored like any other."""
        rule = self.rule_for(upstream, repo)
        if rule is None or cosign.is_signature_artifact(m.body):
            return None
        try:
            verdict = await self.verdict(rule, upstream, repo, m)
        except MirrorError as e:
            return f"{rule.name}: cannot be checked ({e.message})"
        if verdict is None:
            return (f"{rule.name}: an index without a valid signature; each image it lists is "
                    f"checked when pulled")
        if verdict.outcome == "verified":
            return f"{rule.name}: verified, {verdict.reason}"
        if rule.mode == "warn":
            return f"{rule.name}: served with a warning (mode warn): {verdict.reason}"
        return f"{rule.name}: refused, will not be served: {verdict.reason}"

    async def verdict(self, rule: SignatureRule, upstream: str, repo: str,
                      m: Manifest) -> Verdict | None:
        """The verdict for `m` under `rule`, cached or evaluated now (one evaluation at a time
        per digest and rule). None: an index without a valid signature (not refused itself)."""
        key = (str(m.digest), rule.fingerprint)
        known = self.verdicts.get(*key)
        is_index = m.media_type in INDEX_TYPES
        if known is not None and (known.outcome == "verified"
                                  or time.time() - known.checked_at < self.refusal_ttl):
            return None if is_index and known.outcome == "refused" else known
        try:
            verdict, _ = await self._checks.run(key, lambda: self._evaluate(rule, upstream, repo, m))
        except MirrorError as e:
            if known is not None:  # cannot re-evaluate now (upstream down): the last verdict holds
                return None if is_index and known.outcome == "refused" else known
            verdict = Verdict("refused", f"its signatures could not be fetched ({e.message})",
                              time.time())
            return None if is_index else verdict  # not stored: try again next time
        return None if is_index and verdict.outcome == "refused" else verdict

    async def _evaluate(self, rule: SignatureRule, upstream: str, repo: str,
                        m: Manifest) -> Verdict:
        digest = str(m.digest)
        signer, reason = await self._cosign_tag(rule, upstream, repo, digest)
        if signer is None:
            bundle_signer, bundle_reason = await self._bundles(rule, upstream, repo, digest)
            if bundle_signer is not None:
                signer, reason = bundle_signer, ""
            elif bundle_reason and (not reason or reason == "no signature"):
                reason = bundle_reason
        now = time.time()
        if signer is None:
            verdict = Verdict("refused", reason or "no signature", now)
        else:
            verdict = Verdict("verified", f"signed by {signer.name}", now)
            if m.media_type in INDEX_TYPES:  # a signed index vouches for its children
                vouched = Verdict("verified", f"listed in signed index {digest}", now)
                for child in parse_manifest(m.body, m.media_type).children:
                    self.verdicts.put(str(child.digest), rule.fingerprint, vouched)
        self.verdicts.put(digest, rule.fingerprint, verdict)
        return verdict

    # -- finding signatures ------------------------------------------------------------------

    async def _cosign_tag(self, rule: SignatureRule, upstream: str, repo: str,
                          digest: str) -> tuple[cosign.PublicKey | None, str]:
        try:
            answer = await self.tags.resolve(upstream, repo, cosign.signature_tag(digest))
        except ManifestUnknown:
            return None, "no signature"
        layers = cosign.signature_layers(answer.manifest.body)
        if not layers:
            return None, "its signature manifest has no simple-signing layer"
        reason = ""
        for layer in layers:
            payload = await self._small_blob(upstream, repo, layer.digest, layer.size)
            if payload is None:
                reason = reason or f"signature payload {layer.digest} is too large"
                continue
            signer, why = cosign.verify_simple_signing(payload, layer.signature, digest, rule.keys)
            if signer is not None:
                return signer, ""
            # A signature by one of our keys over the wrong payload says more than "not ours".
            if not reason or why.startswith("the payload"):
                reason = why
        return None, reason

    async def _bundles(self, rule: SignatureRule, upstream: str, repo: str,
                       digest: str) -> tuple[cosign.PublicKey | None, str]:
        reason = ""
        for ref in await self._bundle_referrers(upstream, repo, digest):
            try:
                answer = await self.manifests.by_digest(self.client_for(upstream), repo,
                                                        Digest.parse(ref))
            except (MirrorError, ValueError):
                continue
            for layer in cosign.bundle_layers(answer.manifest.body):
                bundle = await self._small_blob(upstream, repo, layer.digest, layer.size)
                if bundle is None:
                    continue
                signer, why = cosign.verify_bundle(bundle, digest, rule.keys)
                if signer is not None:
                    return signer, ""
                reason = reason or why
        return None, reason

    async def _bundle_referrers(self, upstream: str, repo: str, digest: str) -> list[str]:
        """Through the referrers API, else the referrers tag schema (`sha256-<hex>`), which is
        also what a seeded or imported cache holds."""
        client = self.client_for(upstream)
        if client is not None:
            try:
                doc = await client.get_referrers(repo, digest, "")
            except MirrorError:
                doc = None
            if doc is not None and doc.status == 200:
                return cosign.bundle_referrers(doc.body)
        try:
            answer = await self.tags.resolve(upstream, repo, cosign.referrers_tag(digest))
        except ManifestUnknown:
            return []
        return cosign.bundle_referrers(answer.manifest.body)

    async def _small_blob(self, upstream: str, repo: str, digest_text: str,
                          size: int) -> bytes | None:
        """A payload or bundle through the blob cache (verified, kept for offline use)."""
        if size > cosign.MAX_SIGNATURE_DOCUMENT:
            return None
        digest = Digest.parse(digest_text)
        try:
            handle = await self.blobs.open(self.client_for(upstream), repo, digest, size)
            try:
                how = handle.body
                if isinstance(how, Uncached):  # disk full: a verified stream of its own
                    return b"".join([chunk async for chunk in how.stream])
                if isinstance(how, Download):
                    fetch = how.fetch
                    if how.fd is not None:
                        fetch.close_reader(how.fd)  # we read the committed file instead
                        how.fd = None
                    while not fetch.done and fetch.error is None:
                        await fetch.changed()
                    if fetch.error is not None:
                        raise fetch.error
            finally:
                self.blobs.release(handle)
        except MirrorError:
            raise
        except Exception as e:  # a download's I/O error: a failed fetch, never a 500
            raise UpstreamUnavailable(f"signature blob {digest} could not be read: {e}") from e
        body = self.blobs.tier.read_bytes_sync(digest)
        if body is None or Digest.of(body, digest.algorithm) != digest:
            raise ManifestUnknown(f"signature blob {digest} vanished from the cache")
        return body

    # -- reporting -----------------------------------------------------------------------------

    def _record(self, r: Refusal) -> None:
        self.recent.append(r)
        if self.audit is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.time))
            self.audit.write({"time": f"{stamp}.{int(r.time % 1 * 1000):03d}Z",  # as request lines
                              "event": "signature-refused" if r.mode == "enforce"
                              else "signature-warn",
                              "upstream": r.upstream, "repository": r.repo, "digest": r.digest,
                              "rule": r.rule, "mode": r.mode, "reason": r.reason})

    def status(self) -> dict[str, Any]:
        """For /status.json and the status page: the rules and the latest refusals."""
        return {
            "rules": [{"name": r.name, "mode": r.mode, "upstreams": list(r.upstreams),
                       "repositories": list(r.repositories),
                       "keys": [k.name for k in r.keys]} for r in self.rules],
            "recent_refusals": [{"time": r.time, "image": f"{r.upstream}/{r.repo}",
                                 "digest": r.digest, "rule": r.rule, "mode": r.mode,
                                 "reason": r.reason} for r in reversed(self.recent)],
        }
