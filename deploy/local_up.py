"""``make up``: the producer, a worker, the metrics service and a scheduler as local processes, stdlib only.

Reads the effective settings with ``sluice config --json`` (so ``SLUICE_*`` variables apply as they
do for the services), checks that RabbitMQ and Redis answer, starts the four services with their
output interleaved and prefixed, and on Ctrl-C or SIGTERM stops them all gracefully (SIGTERM, then
SIGKILL after the worker's grace period). Exits 0 after a requested stop, 1 if the brokers are not
there or a service stops by itself. The scheduler serves /healthz and /metrics on 127.0.0.1:
``SCHEDULER_PORT`` (9110).

Where the ``prometheus`` binary is installed it runs too, with ``deploy/prometheus/prometheus.yml``
pointed at the local metrics port, on 127.0.0.1:``PROMETHEUS_PORT`` (9090), its data in a temporary
directory. Its own log does not reach the terminal: it goes to ``PROMETHEUS_LOG``
(``$TMPDIR/sluice-up-prometheus.log`` by default), a file truncated at each start and kept after the
stop, whose path is printed once at start. It is optional: if it stops by itself the services go on
(the line that says so quotes the last line of its log).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

SERVICES = ("producer", "worker", "metrics", "scheduler")
DEPLOY = Path(__file__).resolve().parent
START_BROKERS = (
    "`rabbitmq-server -detached` and `redis-server --daemonize yes --save ''`, "
    "or `docker compose up -d rabbitmq redis`"
)


def say(line: str) -> None:
    print(f"sluice up: {line}", file=sys.stderr, flush=True)


def sluice_command() -> str:
    beside = Path(sys.executable).with_name("sluice")
    return str(beside) if beside.exists() else "sluice"


def effective_settings(sluice: str) -> dict[str, object]:
    done = subprocess.run(
        [sluice, "config", "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip() or f"sluice config exited with {done.returncode}")
    settings: dict[str, object] = json.loads(done.stdout)
    return settings


def answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Path(parts.path).exists()
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def broker_problem(settings: dict[str, object]) -> str | None:
    """One line naming the brokers that do not answer and how to start them, or None."""
    down = []
    amqp, redis = str(settings["amqp_url"]), str(settings["redis_url"])
    if not answers(amqp, 5672):
        down.append(f"RabbitMQ ({amqp})")
    if not answers(redis, 6379):
        down.append(f"Redis ({redis})")
    if not down:
        return None
    verb = "does" if len(down) == 1 else "do"
    return f"{' and '.join(down)} {verb} not answer; start the brokers with {START_BROKERS}"


def local_url(host: object, port: object, path: str = "") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else str(host)
    return f"http://{shown}:{port}{path}"


def prometheus_command(workdir: Path, metrics_target: str, port: str) -> list[str] | None:
    """The command running Prometheus with the deploy config aimed at ``metrics_target``; None if absent."""
    exe = shutil.which("prometheus")
    if exe is None:
        return None
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    config = config.replace('"metrics:9108"', f'"{metrics_target}"')
    config = config.replace("  - alerts.yml", f"  - {DEPLOY / 'prometheus' / 'alerts.yml'}")
    path = workdir / "prometheus.yml"
    path.write_text(config)
    return [
        exe,
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]


def prometheus_log_path() -> Path:
    """Where Prometheus' own log goes: ``PROMETHEUS_LOG``, or a file in the temporary directory."""
    chosen = os.environ.get("PROMETHEUS_LOG")
    return Path(chosen) if chosen else Path(tempfile.gettempdir()) / "sluice-up-prometheus.log"


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log file (at most ``limit`` characters), or ""."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def pump(name: str, stream: IO[str], lock: threading.Lock) -> None:
    """Copy a child's output to ours, each line prefixed with the service name."""
    for line in stream:
        with lock:
            sys.stdout.write(f"{name:<8} | {line}")
            sys.stdout.flush()


def signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Send ``sig`` to the child's process group (it leads its own session), if it still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it may have exited just now
            os.killpg(proc.pid, sig)


def main() -> int:
    sluice = sluice_command()
    settings = effective_settings(sluice)
    problem = broker_problem(settings)
    if problem:
        say(problem)
        return 1

    stop = threading.Event()
    requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        requested.set()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    lock = threading.Lock()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: dict[str, subprocess.Popen[str]] = {}
    pumps: list[threading.Thread] = []
    workdir = Path(tempfile.mkdtemp(prefix="sluice-up-"))
    commands = {name: [sluice, name] for name in SERVICES}
    commands["scheduler"] += ["--port", os.environ.get("SCHEDULER_PORT", "9110")]
    metrics_host = local_url(settings["metrics_host"], settings["metrics_port"]).removeprefix("http://")
    prom_port = os.environ.get("PROMETHEUS_PORT", "9090")
    prom = prometheus_command(workdir, metrics_host, prom_port)
    prom_log = prometheus_log_path()
    prom_out: IO[str] | None = None
    if prom is None:
        say("prometheus is not installed: running without it")
    else:
        try:
            prom_log.parent.mkdir(parents=True, exist_ok=True)
            prom_out = prom_log.open("w")
        except OSError as e:
            say(f"cannot write prometheus' log to {prom_log} ({e.strerror or e}): running without it")
            prom = None
        else:
            commands["prometheus"] = prom
            say(f"prometheus logs to {prom_log}")
    for name, command in commands.items():
        to_file = name == "prometheus"  # its startup log would bury the services' lines
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=prom_out if to_file else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        children[name] = proc
        if to_file:
            continue
        assert proc.stdout is not None
        t = threading.Thread(target=pump, args=(name, proc.stdout, lock), daemon=True)
        t.start()
        pumps.append(t)
    if prom_out is not None:
        prom_out.close()  # the child holds its own descriptor

    producer = local_url(settings["producer_host"], settings["producer_port"])
    metrics = local_url(settings["metrics_host"], settings["metrics_port"], "/metrics")
    say(f"producer {producer}  metrics {metrics}  (Ctrl-C stops all)")
    if prom is not None:
        say(
            f"prometheus http://127.0.0.1:{prom_port}  live page {local_url(settings['metrics_host'], settings['metrics_port'], '/')}"
        )

    failed: list[str] = []
    optional_gone: set[str] = set()
    while not stop.wait(0.2):
        for name, proc in children.items():
            if proc.poll() is not None and name not in optional_gone:
                if name == "prometheus":  # optional: say so, keep the services running
                    optional_gone.add(name)
                    last = last_line(prom_log)
                    said = f" (last line of {prom_log}: {last})" if last else f" (its log: {prom_log})"
                    say(f"prometheus exited with {proc.returncode}{said}; the services go on")
                    continue
                failed.append(f"{name} exited with {proc.returncode}")
                stop.set()

    grace = float(str(settings.get("grace_period", 30))) + 5
    for proc in children.values():
        signal_group(proc, signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {grace:g}s: killing it")
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    for t in pumps:
        t.join(5)
    shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        say("; ".join(failed) + ": stopped the others")
        return 1
    bad = [
        f"{n} exited with {p.returncode}"
        for n, p in children.items()
        if p.returncode not in (0, -signal.SIGTERM) and n not in optional_gone
    ]
    say("stopped" + (f" ({'; '.join(bad)})" if bad else ""))
    return 1 if bad or not requested.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
