"""ics.metrics's endpoint: /health says why it is unhealthy, /metrics is prometheus_client's
exposition, a taken port stops the service with the setting to change (two nodes on one host)."""

import urllib.error
import urllib.request

import pytest

from ics import metrics

from .conftest import _free_port


def fetch(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_and_metrics():
    problem = {"now": None}
    port = _free_port()
    server = metrics.serve("127.0.0.1", port, lambda: problem["now"])
    try:
        assert fetch(port, "/health") == (200, "ok\n")
        problem["now"] = "redis: ConnectionError: refused"
        assert fetch(port, "/health") == (503, "redis: ConnectionError: refused\n")
        status, text = fetch(port, "/metrics")
        assert status == 200 and "# TYPE ics_calls_total counter" in text
        assert 'ics_holds_refused_total{minute="first"}' in text  # labelled at zero: a scrape shows it exists
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_check_is_a_reason_and_port_0_serves_nothing():
    port = _free_port()
    server = metrics.serve("127.0.0.1", port, lambda: 1 / 0)
    try:
        status, body = fetch(port, "/health")
        assert status == 503 and body.startswith("health check failed: ZeroDivisionError")
    finally:
        server.shutdown()
        server.server_close()
    assert metrics.serve("127.0.0.1", 0, lambda: None) is None


def test_a_taken_port_names_the_setting():
    port = _free_port()
    server = metrics.serve("127.0.0.1", port, lambda: None)
    try:
        with pytest.raises(metrics.PortTaken, match=r"fastagi\.metrics_port"):
            metrics.serve("127.0.0.1", port, lambda: None, "fastagi.metrics_port")
    finally:
        server.shutdown()
        server.server_close()
