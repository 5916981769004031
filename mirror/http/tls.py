"""TLS on the listen address (config `tls`), with certificate reload.

One SSLContext serves every connection. `reload()` calls `load_cert_chain` again on that same
context: OpenSSL copies the certificate into each connection when it starts, so connections
opened afterwards get the new certificate and open ones keep theirs. A renewed certificate
(cert-manager, certbot) is picked up on SIGHUP without dropping a single connection. If the new
files do not load (half-written, key and cert mismatched) the old certificate stays in use.

With `client_ca`, clients must present a certificate signed by that CA (mTLS); the handshake
fails otherwise, before any HTTP is read."""

from __future__ import annotations

import logging
import ssl

from mirror.config import TlsConfig

log = logging.getLogger("mirror.http.tls")


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; fail instead.
    raise ValueError("encrypted private keys are not supported")


class ServerTLS:
    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        if config.client_ca is not None:
            ctx.load_verify_locations(cafile=str(config.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(config.cert, config.key, _no_password)
        self.context = ctx

    def reload(self) -> bool:
        try:
            # Try the pair on a scratch context first: a failed load_cert_chain can leave a
            # context with the new certificate and no key, and then every handshake fails.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                self.config.cert, self.config.key, _no_password)
            self.context.load_cert_chain(self.config.cert, self.config.key, _no_password)
        except (OSError, ssl.SSLError, ValueError) as e:
            log.error("TLS certificate %s not reloaded, keeping the old one: %s", self.config.cert,
                      getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
            return False
        if self.config.client_ca is not None:
            try:
                # Adds the CA file's certificates; ones removed from the file stay trusted
                # until a restart (OpenSSL has no way to drop them from a context).
                self.context.load_verify_locations(cafile=str(self.config.client_ca))
            except (OSError, ssl.SSLError) as e:
                log.error("TLS client CA %s not reloaded: %s", self.config.client_ca, e)
        log.info("TLS certificate reloaded from %s", self.config.cert)
        return True
