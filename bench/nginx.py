"""nginx `proxy_cache` in front of a registry: the cache many sites run today.

Modelled on the well-known nginx registry caches (rpardini/docker-registry-proxy): blobs are
cached by URI (query ignored, so containerd's ?ns= does not split the cache), manifests by
digest by URI, manifests by tag by URI plus the first Accept line for a short TTL; everything
else is passed through. Debian's nginx-light has every module this needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.support._loop import free_port

NGINX = "/usr/sbin/nginx"


def nginx_conf(port: int, upstream_hostport: str, root: Path, tag_ttl: str = "60s",
               workers: int = 2, scheme: str = "http") -> str:
    cache = root / "cache"
    # As root, nginx workers would run as nobody and could not enter a 0700 temp directory.
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/client_body;
  proxy_temp_path {root}/proxy_temp;
  fastcgi_temp_path {root}/fastcgi_temp;
  uwsgi_temp_path {root}/uwsgi_temp;
  scgi_temp_path {root}/scgi_temp;
  sendfile on;
  tcp_nopush on;
  proxy_cache_path {cache}/blobs levels=1:2 keys_zone=blobs:32m max_size=32g inactive=60d use_temp_path=off;
  proxy_cache_path {cache}/manifests levels=1:2 keys_zone=manifests:8m max_size=1g
                   inactive=60d use_temp_path=off;
  upstream origin {{ server {upstream_hostport}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_read_timeout 900s;
    proxy_buffering on;
    add_header X-Cache-Status $upstream_cache_status always;
    proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
    proxy_cache_lock on;
    proxy_cache_lock_timeout 880s;
    proxy_cache_lock_age 880s;
    proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;

    location ~ "^/v2/.+/blobs/sha256:[a-f0-9]{{64}}$" {{
      proxy_pass {scheme}://origin;
      proxy_cache blobs;
      proxy_cache_key $uri;
      proxy_cache_valid 200 206 60d;
    }}
    location ~ "^/v2/.+/manifests/sha256:[a-f0-9]{{64}}$" {{
      proxy_pass {scheme}://origin;
      proxy_cache manifests;
      proxy_cache_key $uri;
      proxy_cache_valid 200 60d;
    }}
    location ~ ^/v2/.+/manifests/[^/]+$ {{
      proxy_pass {scheme}://origin;
      proxy_cache manifests;
      proxy_cache_key $uri$http_accept;
      proxy_cache_valid 200 {tag_ttl};
    }}
    location / {{ proxy_pass {scheme}://origin; }}
  }}
}}
"""


class NginxCache:
    """nginx on a free 127.0.0.1 port with its cache under `root` (wiped on stop)."""

    def __init__(self, upstream_url: str, root: Path, workers: int = 2) -> None:
        # An https upstream is proxied without checking its certificate (nginx 1.22 checks
        # names, not the IP address the test certificate is for): the same TLS work otherwise.
        self.scheme = "https" if upstream_url.startswith("https://") else "http"
        self.upstream = upstream_url.split("://", 1)[1].rstrip("/")
        self.root = root
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> NginxCache:
        (self.root / "cache").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.root / "nginx.conf"
        conf.write_text(nginx_conf(self.port, self.upstream, self.root, workers=self.workers,
                                  scheme=self.scheme))
        err = str(self.root / "error.log")
        subprocess.run([NGINX, "-q", "-t", "-c", str(conf), "-e", err], check=True)
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-e", err],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer: nginx is up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start: " + (self.root / "error.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NginxCache:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
