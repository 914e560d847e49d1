"""deploy/healthcheck.py, the container health checks, against real sockets."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


@pytest.fixture(scope="module")
def hc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sluice_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_http(hc: ModuleType, http_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert hc.main(["http", f"http://127.0.0.1:{http_port}/healthz"]) == 0
    assert hc.main(["http", f"http://127.0.0.1:{http_port}/broken"]) == 1
    assert "503" in capsys.readouterr().err


def test_http_nothing_listening(hc: ModuleType) -> None:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert hc.main(["http", f"http://127.0.0.1:{port}/healthz"]) == 1


def test_amqp_connection_sees_established_connections(hc: ModuleType) -> None:
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert not hc.established_to(port)
        assert hc.main(["amqp-connection", str(port)]) == 1
        with closing(socket.create_connection(("127.0.0.1", port))):
            server_side, _ = listener.accept()
            with closing(server_side):
                assert hc.established_to(port)
                assert hc.main(["amqp-connection", str(port)]) == 0


def test_usage(hc: ModuleType) -> None:
    assert hc.main([]) == 2
    assert hc.main(["amqp-connection", "x"]) == 2


@pytest.mark.parametrize(
    ("cmdline", "env", "check"),
    [
        (
            ["/opt/sluice/bin/python3.11", "/opt/sluice/bin/sluice", "producer", "--host", "0.0.0.0"],
            {},
            ["http", "http://127.0.0.1:8000/healthz"],
        ),
        (["sluice", "producer"], {"SLUICE_PRODUCER_PORT": "8100"}, ["http", "http://127.0.0.1:8100/healthz"]),
        (
            ["sluice", "metrics", "--host", "0.0.0.0", "--port", "9200"],
            {},
            ["http", "http://127.0.0.1:9200/healthz"],
        ),
        (["sluice", "worker"], {"SLUICE_AMQP_URL": "amqp://u:p@rabbitmq:5673/"}, ["amqp-connection", "5673"]),
        (["sluice", "worker"], {}, ["amqp-connection", "5672"]),
        (["sluice", "config"], {}, []),
    ],
)
def test_auto_picks_the_services_check(
    hc: ModuleType, cmdline: list[str], env: dict[str, str], check: list[str]
) -> None:
    assert hc.auto_check(cmdline, env) == check
