"""Container health checks, stdlib only (run inside the sluice image by docker-compose.yml).

    python deploy/healthcheck.py http URL            2xx from URL within 3 s
    python deploy/healthcheck.py amqp-connection [PORT]
                                                     this container holds an established TCP
                                                     connection to PORT (default 5672): the worker
                                                     is connected to RabbitMQ
    python deploy/healthcheck.py auto                the check of the service the container runs
                                                     (read from /proc/1/cmdline): producer and
                                                     metrics GET /healthz on their port, worker
                                                     amqp-connection to SLUICE_AMQP_URL's port;
                                                     any other command is healthy (the image's
                                                     HEALTHCHECK)

Exit 0 when healthy, 1 (with one line on stderr) when not, 2 on bad usage.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.parse
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


DEFAULT_PORTS = {"producer": ("SLUICE_PRODUCER_PORT", 8000), "metrics": ("SLUICE_METRICS_PORT", 9108)}


def auto_check(cmdline: list[str], env: dict[str, str]) -> list[str]:
    """The arguments of the check that fits the command line ``sluice SERVICE ...``."""
    # PID 1 is `sluice SERVICE ...`, or `python3.11 /opt/sluice/bin/sluice SERVICE ...` (the script's shebang)
    at = next((i for i, a in enumerate(cmdline) if a.rsplit("/", 1)[-1] == "sluice"), -1)
    args = cmdline[at + 1 :]
    service = next((a for a in args if not a.startswith("-")), "")
    if service in DEFAULT_PORTS:
        var, default = DEFAULT_PORTS[service]
        port = env.get(var) or str(default)
        if "--port" in args and args.index("--port") + 1 < len(args):
            port = args[args.index("--port") + 1]
        return ["http", f"http://127.0.0.1:{port}/healthz"]
    if service == "worker":
        url = urllib.parse.urlsplit(env.get("SLUICE_AMQP_URL", "amqp://localhost:5672/").split(",")[0])
        return ["amqp-connection", str(url.port or (5671 if url.scheme == "amqps" else 5672))]
    return []


def main(argv: list[str]) -> int:
    if argv == ["auto"]:
        try:
            cmdline = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
        except OSError as e:
            print(f"unhealthy: cannot read the container's command: {e}", file=sys.stderr)
            return 1
        argv = auto_check([a for a in cmdline if a], dict(os.environ))
        if not argv:
            return 0
    if len(argv) == 2 and argv[0] == "http":
        problem = http_ok(argv[1])
    elif 1 <= len(argv) <= 2 and argv[0] == "amqp-connection" and (len(argv) == 1 or argv[1].isdigit()):
        port = int(argv[1]) if len(argv) == 2 else 5672
        problem = None if established_to(port) else f"no established connection to port {port}"
    else:
        print("usage: healthcheck.py http URL | amqp-connection [PORT] | auto", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
