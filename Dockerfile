# mirror: pull-through caching mirror for container registries.
#
#   docker build -t mirror .                                  # python:3.11-slim, deps from PyPI
#   docker run -d -p 5000:5000 -v mirror-cache:/var/cache/mirror mirror
#
# Without registry access (air-gapped build hosts; this project's own test), build on a local
# base and install from a wheelhouse in the build context, with no network at all:
#   scripts/build-base-image.sh                               # debootstrap -> mirror-base:local
#   pip wheel --wheel-dir wheelhouse . setuptools wheel       # on a machine with PyPI access
#   docker build --network none --build-arg BASE=mirror-base:local \
#                --build-arg PIP_ARGS="--no-index --find-links /src/wheelhouse" -t mirror .
#
# Config: /etc/mirror/mirror.yaml (deploy/mirror.yaml) unless MIRROR_CONFIG names another file;
# mount yours over it. Cache: the /var/cache/mirror volume. Runs as uid 10001.

# Any Debian-like image with python3 >= 3.11 and python3 -m venv works.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Extra pip options, e.g. an offline wheelhouse or a private index.
ARG PIP_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
# One venv holds mirror and its dependencies, byte-compiled (the runtime user cannot write
# there); pip itself is removed: the runtime never installs anything.
RUN python3 -m venv /opt/mirror \
 && /opt/mirror/bin/pip install $PIP_ARGS /src \
 && /opt/mirror/bin/mirror --version \
 && /opt/mirror/bin/pip uninstall -y pip \
 && /opt/mirror/bin/python -m compileall -q /opt/mirror/lib

FROM ${BASE}
ARG UID=10001
RUN groupadd --system --gid "$UID" mirror \
 && useradd --system --uid "$UID" --gid mirror --home-dir /var/cache/mirror --no-create-home \
            --shell /usr/sbin/nologin mirror \
 && mkdir -p /var/cache/mirror /etc/mirror \
 && chown mirror:mirror /var/cache/mirror
COPY --from=build /opt/mirror /opt/mirror
COPY --from=build /src/deploy/mirror.yaml /etc/mirror/mirror.yaml
ENV PATH=/opt/mirror/bin:$PATH \
    MIRROR_CONFIG=/etc/mirror/mirror.yaml \
    MIRROR_HEALTHCHECK_URL=http://127.0.0.1:5000/healthz \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER mirror
WORKDIR /var/cache/mirror
VOLUME ["/var/cache/mirror"]
EXPOSE 5000
# /healthz is open even with client auth on. The stdlib does the request (no curl in the image);
# a TLS listener is checked without verifying its certificate (it is our own, on loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, ssl, urllib.request; urllib.request.urlopen(os.environ['MIRROR_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["mirror"]
CMD ["serve"]
