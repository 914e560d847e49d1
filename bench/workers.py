"""Throughput against the number of worker processes: the measured points of docs/scaling.md's model.

    make bench-workers                                  # 1, 2, 4 workers; plain, policy, idem; standalone, cluster
    make bench-workers BENCH_WORKERS_ARGS='--brokers standalone --rounds 3'   # options passed through
    bench/.venv/bin/python bench/workers.py --workers 1,2,4 --flavours plain,idem --brokers standalone \\
        --n 20000 --rounds 2

Each point (broker, flavour, number of workers) is a drain: ``k`` ``sluice worker`` processes (the bench's
tasks, ``--concurrency 256 --prefetch 256`` as in ``make bench``) start on an empty queue and are stopped
(SIGSTOP) once the queue has ``k`` consumers; N noop tasks are published (bench/peer_sluice.py's
``Publisher.publish_many``, confirms); then every worker is continued (SIGCONT) at once, so all of them
drain the same pre-filled queue from the same moment. Measured over the window from the first to the last
completion (the peer harness's per-process counters in Redis):

    rate        (N - 1) / window, tasks a second
    worker      CPU of the workers' process trees a task (µs), summed over the k workers
    broker      CPU of the broker a task (µs): the default node's beam, or the three cluster nodes' beams,
                less their background (a second measured just before the workers are continued, at its
                rate over the window; also for the Redis figures below; the raw figures are in the JSON)
    redis       CPU of the standalone redis-server a task (µs), its commands a task (those run inside
                scripts included) and its script calls a task (EVAL/EVALSHA: the round trips of the
                primitives, batches included); the server is the machine's, shared with whatever else
                runs, so read these as upper bounds
    host busy   the machine's CPU busy over the window (100 % = every core)

Flavours: ``plain`` (bench.noop), ``policy`` (a rate limit that is never reached: one coalesced GCRA
decision per task), ``idem`` (the same plus idempotency: a claim and a completion per task). Brokers:
``standalone`` (the machine's node on 5672) and ``cluster`` (the 3-node loopback cluster, SLUICE_AMQP_URL
with its three URLs; booted if it is not running and left as found, bench/rabbit_cluster.py). The points run
interleaved, round by round, so the rows of one run share the machine's load. The JSON of every drain goes
to bench/results/workers-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("BENCH_PEERS_DIR", HERE.parent.parent / "shared" / "bench" / "peers")).resolve()
sys.path.insert(0, str(PEERS))

import pika  # noqa: E402
import redis  # noqa: E402

import rabbit_cluster  # noqa: E402
import run as harness  # noqa: E402  (the peer harness, by path: its /proc readers and completion counters)
from cpu_probes import Sampler, background, beam_pids, redis_counts  # noqa: E402

SLUICE = str(Path(sys.executable).with_name("sluice"))
STANDALONE = harness.AMQP_URL
POLICY = {"plain": "", "policy": "policy", "idem": "idem"}  # BENCH_SLUICE_POLICY of bench/peer_sluice.py


def queue_consumers(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def delete_queues(url: str, prefix: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for q in (f"{prefix}.q.default", f"{prefix}.dlq"):
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                conn.channel().queue_delete(q)
    finally:
        conn.close()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.1)


def drain(broker: str, flavour: str, k: int, n: int, amqp_url: str, logs: Path) -> dict[str, Any]:
    """One point: k stopped workers, N tasks published, all continued at once; the window's figures."""
    prefix = f"bench_workers_{uuid.uuid4().hex[:8]}"
    run_id = f"workers.{broker}.{flavour}.{k}.{prefix}"
    admin = rabbit_cluster.admin_url() if broker == "cluster" else STANDALONE
    env = {
        **os.environ,
        "SLUICE_PREFIX": prefix,
        "SLUICE_QUEUE_TYPE": "quorum",
        "SLUICE_AMQP_URL": amqp_url,
        "SLUICE_LOG_LEVEL": "WARNING",
        "BENCH_SLUICE_POLICY": POLICY[flavour],
        "BENCH_RUN": run_id,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(PEERS)]),
    }
    argv = [SLUICE, "worker", "--tasks", "peer_sluice", "--queues", "default"]
    argv += ["--concurrency", "256", "--prefetch", "256"]
    queue = f"{prefix}.q.default"
    workers: list[subprocess.Popen[bytes]] = []
    rds = redis.Redis.from_url(harness.REDIS_URL)
    try:
        for i in range(k):
            with (logs / f"{run_id}.w{i}.log").open("wb") as err:
                workers.append(
                    subprocess.Popen(
                        argv, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
                    )
                )
        wait_for(lambda: queue_consumers(admin, queue) >= k, 90, f"{k} consumers on {queue}")
        for w in workers:
            os.killpg(w.pid, signal.SIGSTOP)
        with (logs / f"{run_id}.pub.log").open("wb") as err:
            pub = subprocess.run(
                [sys.executable, str(HERE / "peer_sluice.py"), "publish", "noop", str(n)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=120 + n / 50,
                check=True,
            )
        published = json.loads(pub.stdout.decode().strip().splitlines()[-1])
        beams = beam_pids()[broker]
        redis_pid = int(rds.info("server")["process_id"])
        sampler = Sampler({"workers": [w.pid for w in workers], "broker": beams, "redis": [redis_pid]})
        idle = background(sampler, rds)  # what the broker and Redis do without this point's tasks
        cmds0, scripts0 = redis_counts(rds)
        counted0 = time.time()
        host0 = harness.cpu_stat()
        sampler.sample()
        for w in workers:
            os.killpg(w.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60 + n / 50
        while True:
            time.sleep(0.05)
            sampler.sample()
            done, first, last = harness.completions(run_id)
            if done >= n:
                break
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"{done}/{n} done (see {logs}/{run_id}.w*.log)")
        time.sleep(0.05)
        sampler.sample()
        cmds1, scripts1 = redis_counts(rds)
        counted = time.time() - counted0
        host1 = harness.cpu_stat()
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGCONT)
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        for key in rds.scan_iter(f"bench:{run_id}:*"):
            rds.delete(key)
        for key in rds.scan_iter(f"{prefix}:*", count=1000):
            rds.unlink(key)
        rds.close()
        with contextlib.suppress(Exception):
            delete_queues(admin, prefix)
    window = last - first
    d = [b - a for a, b in zip(host0, host1, strict=True)]
    per_task = {g: round(1e6 * sampler.between(g, first, last) / (n - 1), 1) for g in sampler.groups}
    net = {  # less the background measured just before, at its rate over the same window
        g: round(max(0.0, per_task[g] - 1e6 * idle[g] * window / (n - 1)), 1) for g in ("broker", "redis")
    }
    return {
        "broker": broker,
        "flavour": flavour,
        "workers": k,
        "n": n,
        "rate": (n - 1) / window,
        "publish_rate": n / (published["t1"] - published["t0"]),
        "worker_us": per_task["workers"],
        "broker_us": net["broker"],
        "redis_us": net["redis"],
        "broker_us_raw": per_task["broker"],
        "redis_us_raw": per_task["redis"],
        "redis_cmds_per_task": round(max(0.0, cmds1 - cmds0 - idle["cmds"] * counted) / n, 2),
        "redis_scripts_per_task": round(max(0.0, scripts1 - scripts0 - idle["scripts"] * counted) / n, 3),
        "background": idle,
        "host_busy_pct": round(100 * (sum(d) - d[3] - d[4]) / max(1, sum(d)), 1),
        "loadavg": os.getloadavg()[0],
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over the rounds of each point; ``x1`` the rate against one worker, same broker and flavour."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["broker"], r["flavour"], r["workers"]), []).append(r)
    out = []
    for (broker, flavour, k), rs in groups.items():
        s: dict[str, Any] = {"broker": broker, "flavour": flavour, "workers": k, "runs": len(rs)}
        for f in (
            "rate",
            "worker_us",
            "broker_us",
            "redis_us",
            "redis_cmds_per_task",
            "redis_scripts_per_task",
        ):
            s[f] = statistics.median(r[f] for r in rs)
        for f in ("host_busy_pct", "publish_rate"):
            s[f] = statistics.median(r[f] for r in rs)
        s["rate_min"], s["rate_max"] = min(r["rate"] for r in rs), max(r["rate"] for r in rs)
        out.append(s)
    one = {(s["broker"], s["flavour"]): s["rate"] for s in out if s["workers"] == 1}
    for s in out:
        base = one.get((s["broker"], s["flavour"]))
        s["x1"] = round(s["rate"] / base, 2) if base else None
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    hdr = (
        f"{'broker':<10} {'flavour':<7} {'workers':>7} {'tasks/s':>8} {'min-max':>13} {'x1':>5} "
        f"{'worker us':>9} {'broker us':>9} {'redis us':>8} {'redis cmd':>9} {'scripts':>7} {'host busy':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for s in summary:
        rng = f"{s['rate_min']:.0f}-{s['rate_max']:.0f}" if s["runs"] > 1 else ""
        x1 = f"{s['x1']:.2f}" if s["x1"] is not None else ""
        print(
            f"{s['broker']:<10} {s['flavour']:<7} {s['workers']:>7} {s['rate']:>8.0f} {rng:>13} {x1:>5} "
            f"{s['worker_us']:>9.0f} {s['broker_us']:>9.0f} {s['redis_us']:>8.0f} "
            f"{s['redis_cmds_per_task']:>9.2f} {s['redis_scripts_per_task']:>7.3f} {s['host_busy_pct']:>8.0f}%"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--workers", default="1,2,4", help="numbers of worker processes (default 1,2,4)")
    ap.add_argument("--flavours", default="plain,policy,idem", help="plain, policy, idem (default all)")
    ap.add_argument("--brokers", default="standalone,cluster", help="standalone, cluster (default both)")
    ap.add_argument("--n", type=int, default=20000, help="tasks a drain (default 20000)")
    ap.add_argument(
        "--rounds", type=int, default=2, help="repetitions of every point, interleaved (default 2)"
    )
    args = ap.parse_args()
    ks = [int(x) for x in args.workers.split(",")]
    flavours = [f for f in args.flavours.split(",") if f]
    brokers = [b for b in args.brokers.split(",") if b]
    if unknown := (set(flavours) - set(POLICY)) | (set(brokers) - {"standalone", "cluster"}):
        sys.exit(f"unknown flavour or broker: {sorted(unknown)}")
    logs = Path(f"/tmp/bench-workers-logs-{time.strftime('%Y%m%d-%H%M%S')}")
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with rabbit_cluster.cluster_up() if "cluster" in brokers else contextlib.nullcontext(STANDALONE) as urls:
        url = {"standalone": STANDALONE, "cluster": urls}
        for rnd in range(args.rounds):
            for broker in brokers:
                for flavour in flavours:
                    for k in ks:
                        try:
                            r = drain(broker, flavour, k, args.n, url[broker], logs)
                        except Exception as e:  # record and go on with the next point
                            print(f"[round {rnd}] {broker} {flavour} x{k}: FAILED {e}", flush=True)
                            continue
                        rows.append({**r, "round": rnd})
                        print(
                            f"[round {rnd}] {broker:<10} {flavour:<6} x{k}: {r['rate']:>7.0f}/s "
                            f"worker {r['worker_us']:.0f} us, broker {r['broker_us']:.0f} us, "
                            f"redis {r['redis_us']:.0f} us/task, host busy {r['host_busy_pct']:.0f}%",
                            flush=True,
                        )
    summary = summarize(rows)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    out = results / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"started": started, "cpus": os.cpu_count(), "n": args.n, "rounds": args.rounds}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    print()
    print_table(summary)
    print(f"\nJSON: {out}; worker logs: {logs}")


if __name__ == "__main__":
    main()
