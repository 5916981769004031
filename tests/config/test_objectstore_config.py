"""cache.object_store: every problem names its key; the secret only comes from the environment."""

from __future__ import annotations

import pytest

from mirror.config import parse_config
from mirror.oci.errors import ConfigError

BASE = {"upstreams": {"docker.io": "http://127.0.0.1:9"}}


def problems(object_store: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config({**BASE, "cache": {"object_store": object_store}}, env=env or {})
    except ConfigError as e:
        return e.problems
    return []


@pytest.mark.parametrize(("section", "key"), [
    ({"url": "file://relative/dir"}, "cache.object_store.url"),
    ({"url": "ftp://host/x"}, "cache.object_store.url"),
    ({"url": "s3://b", "access_key_id": "AK"}, "cache.object_store.access_key_id"),
    ({"url": "s3://b", "max_age": "0s"}, "cache.object_store.max_age"),
    ({"url": "s3://b", "upload_concurrency": 0}, "cache.object_store.upload_concurrency"),
    ({"url": "s3://b", "secret_access_key_env": "NOPE", "access_key_id": "AK"},
     "cache.object_store.secret_access_key_env"),
    ({"url": "s3://b", "endpoint": "127.0.0.1:9000"}, "cache.object_store.endpoint"),
])
def test_bad_object_store_settings_name_their_key(section: dict[str, object], key: str) -> None:
    found = problems(section)
    assert found and all(p.startswith(key + ":") for p in found), found


def test_good_object_store_settings() -> None:
    cfg = parse_config({**BASE, "cache": {"object_store": {
        "url": "s3://bucket/prefix", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1",
        "access_key_id": "AK", "secret_access_key_env": "S3_SECRET", "max_age": "30d",
        "upload_concurrency": 2}}}, env={"S3_SECRET": "s3cr3t"})
    store = cfg.cache.object_store
    assert store is not None
    assert store.max_age == 30 * 86400 and store.upload_concurrency == 2
    assert store.secret_access_key is not None and store.secret_access_key.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(store)
