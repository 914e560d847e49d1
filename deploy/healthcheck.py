"""Container health checks, stdlib only (run inside the sluice image by docker-compose.yml).

    python deploy/healthcheck.py http URL            2xx from URL within 3 s
    python deploy/healthcheck.py amqp-connection [PORT]
                                                     this container holds an established TCP
                                                     connection to PORT (default 5672): the worker
                                                     is connected to RabbitMQ

Exit 0 when healthy, 1 (with one line on stderr) when not, 2 on bad usage.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

ESTABLISHED = "01"  # TCP state in /proc/net/tcp


def http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            status = int(resp.status)
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {e}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def established_to(
    port: int, tables: tuple[Path, ...] = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
) -> bool:
    """True if the network namespace has an ESTABLISHED TCP connection whose remote port is ``port``."""
    want = f"{port:04X}"
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[2].rsplit(":", 1)[-1] == want and fields[3] == ESTABLISHED:
                return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        problem = http_ok(argv[1])
    elif 1 <= len(argv) <= 2 and argv[0] == "amqp-connection" and (len(argv) == 1 or argv[1].isdigit()):
        port = int(argv[1]) if len(argv) == 2 else 5672
        problem = None if established_to(port) else f"no established connection to port {port}"
    else:
        print("usage: healthcheck.py http URL | amqp-connection [PORT]", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
