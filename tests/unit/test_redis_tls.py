"""Redis over TLS (redis.url rediss://, redis.tls_ca) with the ACL users of ics.redis_acl: a real
redis-server on loopback with a certificate from a CA generated here, as a set-up across hosts
would have it. The services connect through ics.store.connect, the one place that does."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest
import redis

from ics import config, keys, redis_acl
from ics.store import connect

from .conftest import _free_port

pytestmark = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("openssl")),
                                reason="needs redis-server and openssl")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "1", "-subj", f"/CN={name}", cwd=d)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=redis", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "srv.crt", "-days", "1", "-extfile", "ext.cnf", cwd=d)
    passwords = {name: secrets.token_hex(16) for name in (*redis_acl.SERVICES, "admin")}
    (d / "users.acl").write_text(redis_acl.render(passwords))
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key", "--tls-ca-cert-file", "ca.crt",
                             "--tls-auth-clients", "no", "--aclfile", "users.acl", "--save", "", "--appendonly", "no",
                             "--loglevel", "warning"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.3)
    try:
        yield d, port, passwords
    finally:
        proc.kill()
        proc.wait(5)


def cfg(port, ca, user="", password=""):
    return config.load(environ={"ICS_REDIS_URL": f"rediss://127.0.0.1:{port}/0", "ICS_REDIS_TLS_CA": str(ca),
                                "ICS_REDIS_USERNAME": user, "ICS_REDIS_PASSWORD": password})


def wait_up(r):
    deadline = time.monotonic() + 10
    while True:
        try:
            return r.ping()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_service_connects_over_tls_as_its_acl_user(tls_redis):
    d, port, pw = tls_redis
    r = connect(cfg(port, d / "ca.crt", "listener", pw["listener"]))
    assert wait_up(r) is True
    assert r.set(keys.LISTENER_ALIVE, "1", px=1000)  # the listener's own key: logged in as listener
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.hset("ics:facility:x", "name", "forged")


def test_tls_refuses_a_server_the_ca_did_not_sign_and_a_client_without_credentials(tls_redis):
    d, port, pw = tls_redis
    wait_up(connect(cfg(port, d / "ca.crt", "fastagi", pw["fastagi"])))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(cfg(port, d / "other-ca.crt", "fastagi", pw["fastagi"])).ping()
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        connect(cfg(port, d / "ca.crt")).get("ics:facilities")
    plain = config.load(environ={"ICS_REDIS_URL": f"redis://127.0.0.1:{port}/0", "ICS_REDIS_USERNAME": "fastagi",
                                 "ICS_REDIS_PASSWORD": pw["fastagi"], "ICS_REDIS_TIMEOUT_MS": "500"})
    with pytest.raises(redis.ConnectionError):  # no plaintext on the TLS port
        connect(plain).ping()
