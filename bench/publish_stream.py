"""``sluice publish TASK -`` fed N NDJSON lines: the console script's peak RSS and publish rate, beside
the raw aio-pika ceiling's publish rate in the same run.

usage: .venv/bin/python bench/publish_stream.py [N]        (default 1,000,000)

What it does, in order:

1. writes N lines of the peer harness's payload (``common.payload(i)``, ~100 B of JSON) to a temporary file;
2. the ceiling: ``peer_ceiling.py publish noop N`` (../shared/bench/peers, used as is: one connection,
   persistent messages, windows of BENCH_PUBLISH_WINDOW=1000 confirms), rate = N / (last confirm - first
   publish) as the harness measures it; its queue is deleted after;
3. sluice: ``cat FILE | sluice publish bench.noop -`` (the installed console script, a real pipe on its
   stdin, its ids read from stdout and counted), rate = the command's own summary (``published N ... in
   Xs``: from connecting to the last confirm) and the wall-clock rate of the whole process (interpreter
   start included); peak RSS = the process's VmHWM (``ru_maxrss`` from ``wait4``). Its queue and
   exchanges are deleted after.

Both publish to the same queue type (BENCH_QUEUE_TYPE: classic, the ceiling's default, or quorum).
BENCH_AMQP_URL (default the local RabbitMQ), BENCH_SKIP_CEILING=1 for the sluice half only,
BENCH_SLUICE_ARGS for extra ``sluice publish`` arguments. Prints one JSON object (and BENCH_OUT, if set,
gets it too). Targets (issue 10, item 3): peak RSS under 100 MB at 1,000,000 lines, rate >= 0.9x ceiling.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("BENCH_PEERS_DIR", HERE.parent.parent / "shared" / "bench" / "peers")).resolve()
SLUICE = str(Path(sys.executable).with_name("sluice"))
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE_TYPE = os.environ.get("BENCH_QUEUE_TYPE", "classic")
TARGET_RSS_MB = 100.0
TARGET_XCEIL = 0.9
SUMMARY = re.compile(r"published (\d+), failed (\d+)(?:, republished (\d+))? in ([\d.]+)s")

sys.path.insert(0, str(PEERS))
from common import payload  # noqa: E402  (the harness's payload, by path)


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(json.dumps(payload(i)) + "\n" for i in range(start, min(n, start + 10_000))))


def wait_rusage(p: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Wait for ``p``; its peak RSS in MB (VmHWM, from the kernel's rusage of that one child) and the
    CPU seconds it used (user + system)."""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux


def count_lines(stream: IO[bytes], into: list[int]) -> None:
    n = 0
    while chunk := stream.read(1 << 16):
        n += chunk.count(b"\n")
    into.append(n)


def ceiling(n: int) -> dict[str, Any]:
    env = {**os.environ, "BENCH_AMQP_URL": AMQP_URL, "PYTHONPATH": str(PEERS)}
    if QUEUE_TYPE == "quorum":
        env["BENCH_CEILING_QUEUE_TYPE"] = "quorum"
    p = subprocess.Popen(
        [sys.executable, "peer_ceiling.py", "publish", "noop", str(n)],
        cwd=PEERS,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert p.stdout is not None
    out = p.stdout.read()
    rss, cpu = wait_rusage(p)
    if p.returncode:
        raise SystemExit(f"the ceiling publisher exited {p.returncode}")
    r = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "rate": round(r["n"] / (r["t1"] - r["t0"]), 1),
        "peak_rss_mb": round(rss, 1),
        "cpu_us_per_task": round(cpu / n * 1e6, 1),
    }


def sluice(n: int, source: Path, prefix: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env |= {"SLUICE_AMQP_URL": AMQP_URL, "SLUICE_PREFIX": prefix, "SLUICE_QUEUE_TYPE": QUEUE_TYPE}
    extra = shlex.split(os.environ.get("BENCH_SLUICE_ARGS", ""))
    start = time.monotonic()
    cat = subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE)
    p = subprocess.Popen(
        [SLUICE, "publish", "bench.noop", "-", "--no-progress", *extra],
        stdin=cat.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert cat.stdout is not None and p.stdout is not None and p.stderr is not None
    cat.stdout.close()  # the child holds the read end
    ids: list[int] = []
    reader = threading.Thread(target=count_lines, args=(p.stdout, ids))
    reader.start()
    err = p.stderr.read().decode()
    rss, cpu = wait_rusage(p)
    wall = time.monotonic() - start
    reader.join()
    cat.wait()
    m = SUMMARY.search(err)
    if p.returncode or m is None:
        raise SystemExit(f"sluice publish exited {p.returncode}: {err.strip()[-2000:]}")
    published, elapsed = int(m.group(1)), float(m.group(4))
    return {
        "exit": p.returncode,
        "ids_printed": ids[0],
        "published": published,
        "failed": int(m.group(2)),
        "rate": round(published / elapsed, 1),
        "rate_wall": round(published / wall, 1),
        "elapsed_s": elapsed,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss, 1),
        "cpu_us_per_task": round(cpu / max(published, 1) * 1e6, 1),
        "summary": err.strip().splitlines()[-1],
    }


def delete(queues: list[str], exchanges: list[str]) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
        for ex in exchanges:
            ch.exchange_delete(ex)
    finally:
        conn.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_N", "1000000"))
    prefix = f"bench_stream_{os.getpid()}"
    out: dict[str, Any] = {"n": n, "queue_type": QUEUE_TYPE, "when": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "input.ndjson"
        write_input(source, n)
        out["input_mb"] = round(source.stat().st_size / 1e6, 1)
        if os.environ.get("BENCH_SKIP_CEILING") != "1":
            try:
                out["ceiling"] = ceiling(n)
            finally:
                delete(["bench.ceiling"], [])
        try:
            out["sluice"] = sluice(n, source, prefix)
        finally:
            delete(
                [f"{prefix}.q.default", f"{prefix}.dlq"],
                [f"{prefix}.{x}" for x in ("tasks", "dead", "requeue", "metrics")],
            )
    s = out["sluice"]
    s["rss_ok"] = s["peak_rss_mb"] < TARGET_RSS_MB
    if "ceiling" in out:
        out["xceil"] = round(s["rate"] / out["ceiling"]["rate"], 3)
        out["xceil_wall"] = round(s["rate_wall"] / out["ceiling"]["rate"], 3)
        out["rate_ok"] = out["xceil"] >= TARGET_XCEIL
    text = json.dumps(out, indent=1)
    print(text)
    if os.environ.get("BENCH_OUT"):
        Path(os.environ["BENCH_OUT"]).write_text(text + "\n")


if __name__ == "__main__":
    main()
