"""``make bench``: the peer harness's workloads against sluice, ceilings (and optionally peers) in the same run.

It imports the harness in ../shared/bench/peers (read-only; its measurement code is used as is) and adds
two systems to it:

    sluice-classic   ``sluice worker`` consuming a classic queue   -> compare with ``ceiling``
    sluice-quorum    ``sluice worker`` consuming a quorum queue    -> compare with ``ceiling-quorum``

Each runs the harness's primary tests: publish + drain (noop), end to end (noop), publish + drain (io),
with one worker process (``--concurrency 256 --prefetch 256``, the ceiling's prefetch), persistent
messages, publisher confirms, acks. The publisher is ``sluice.publisher.Publisher`` (bench/peer_sluice.py).

Environment: BENCH_N_NOOP (20000), BENCH_N_IO (5000), BENCH_REPEAT (3) as in the harness;
BENCH_VARIANTS (default: ceiling,ceiling-quorum,sluice-classic,sluice-quorum,sluice-quorum-track; ``all`` adds
every peer;
sluice-{classic,quorum}-policy (a noop declaring a rate limit never reached), -idem (plus dedup on a
header key) and -track (``@task(..., track=True, result=True)``: state tracked, result stored; issue 13)
are compared with the plain sluice row of their queue type, targets 0.7x, 0.75x and 0.75x: issue 13);
sluice-{classic,quorum}-nometrics: the plain worker with SLUICE_METRICS_ENABLED=false; the plain row (metrics
on) must keep 0.95x of it;
sluice-quorum-cluster: the plain quorum worker and publisher on the 3-node loopback cluster (SLUICE_AMQP_URL
with the three URLs of deploy/cluster/rabbitmq-cluster.sh, booted for the run if it is not running and
taken down after if it was not; bench/rabbit_cluster.py), shown against sluice-quorum (one node);
BENCH_BASELINE=<a source tree of sluice> (e.g. a ``git worktree`` of an older commit) adds a ``-base`` twin of
every sluice variant (``sluice-classic-base``, ``sluice-classic-policy-base``...): the same worker command,
publisher and tasks run from that tree's code (its shared/ and services/ first on PYTHONPATH, its bench/
peer modules), so ``BENCH_VARIANTS=sluice-classic,sluice-classic-base`` compares two commits in one run,
alternately; each row is then shown against its twin, rate and worker CPU per task;
BENCH_OUT: write the summary rows (system, test, workload, n, rate, peak RSS, ...) as JSON there.
The full JSON (with every run) goes to bench/results/bench-<time>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("BENCH_PEERS_DIR", HERE.parent.parent / "shared" / "bench" / "peers")).resolve()
if not (PEERS / "run.py").exists():
    sys.exit(f"peer harness not found at {PEERS} (set BENCH_PEERS_DIR)")
sys.path.insert(0, str(PEERS))

import rabbit_cluster  # noqa: E402
import run as harness  # noqa: E402  (the harness, by path)

TARGET_XCEIL = 0.8
TARGET_RSS_MB = 60.0
TARGET_METRICS = 0.95  # metrics on keep this much of metrics-off throughput
TARGET_BASELINE = 0.95  # a change keeps this much of the baseline tree's throughput (issue 11)
CEILING_OF = {"sluice-classic": "ceiling", "sluice-quorum": "ceiling-quorum"}
# policy-carrying variants against the plain sluice row of the same queue type: (plain, target)
POLICY_OF = {
    f"sluice-{qt}-{flavour}": (f"sluice-{qt}", target)
    for qt in ("classic", "quorum")
    for flavour, target in (("policy", 0.7), ("idem", 0.75), ("track", 0.75))  # idem, track: issue 13
}


BASE_SUFFIX = "-base"


def add_sluice_variants(tree: Path | None = None) -> None:
    """The sluice variants; with ``tree`` (BENCH_BASELINE), their ``-base`` twins running that tree's code."""
    sluice = str(Path(sys.executable).parent / "sluice")
    bench = HERE if tree is None else tree / "bench"
    suffix = "" if tree is None else BASE_SUFFIX
    # that tree's packages ahead of the installed ones: shared/ and every service (pyproject's package roots)
    code = [] if tree is None else [str(d) for d in (tree / "shared", *sorted(tree.glob("services/*")))]
    for qt in ("classic", "quorum"):
        module = str(bench / f"peer_sluice_{qt}")
        prefix = f"bench_sluice_{qt}"
        env = {
            "SLUICE_PREFIX": prefix,
            "SLUICE_QUEUE_TYPE": qt,
            "SLUICE_AMQP_URL": harness.AMQP_URL,
            "SLUICE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([*code, str(bench), str(PEERS)]),
        }
        argv = [sluice, "worker", "--tasks", "peer_sluice", "--queues", "default"]
        argv += ["--concurrency", "256", "--prefetch", "256"]
        harness.VARIANTS[f"sluice-{qt}{suffix}"] = (module, argv, env, harness.PRIMARY)
        harness.QUEUES[module] = [f"{prefix}.q.default", f"{prefix}.dlq"]
        off = {**env, "SLUICE_METRICS_ENABLED": "false"}  # the same worker sending no telemetry
        harness.VARIANTS[f"sluice-{qt}-nometrics{suffix}"] = (module, argv, off, harness.PRIMARY)
        for flavour in ("policy", "idem", "track"):  # same worker and queue, tasks declaring policies
            penv = {**env, "BENCH_SLUICE_POLICY": flavour}
            harness.VARIANTS[f"sluice-{qt}-{flavour}{suffix}"] = (module, argv, penv, harness.PRIMARY)
    if tree is None:  # the plain quorum worker on the 3-node loopback cluster (issue 16)
        add_cluster_variant(sluice)


CLUSTER = "sluice-quorum-cluster"
ADMIN_URL: dict[str, str] = {}  # harness module or queue name -> the broker its purges and counts go to


def add_cluster_variant(sluice: str) -> None:
    """``sluice-quorum-cluster``: worker and publisher given the three nodes' URLs (SLUICE_AMQP_URL); the
    harness's purges and queue counts for it go to node 1 (bench/rabbit_cluster.py); completions are
    counted in the standalone Redis like every variant's."""
    module, prefix = str(HERE / "peer_sluice_cluster"), "bench_sluice_cluster"
    env = {
        "SLUICE_PREFIX": prefix,
        "SLUICE_QUEUE_TYPE": "quorum",
        "SLUICE_AMQP_URL": rabbit_cluster.cluster_urls(),
        "SLUICE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(PEERS)]),
    }
    argv = [sluice, "worker", "--tasks", "peer_sluice", "--queues", "default"]
    argv += ["--concurrency", "256", "--prefetch", "256"]
    harness.VARIANTS[CLUSTER] = (module, argv, env, harness.PRIMARY)
    harness.QUEUES[module] = [f"{prefix}.q.default", f"{prefix}.dlq"]
    for name in (module, *harness.QUEUES[module]):
        ADMIN_URL[name] = rabbit_cluster.admin_url()
    harness.purge = _on_its_broker(harness.purge)
    harness.queue_info = _on_its_broker(harness.queue_info)


def _on_its_broker(fn: Any) -> Any:
    """``fn(name, ...)`` of the harness with its AMQP_URL (read by its amqp_call) set to the broker of
    ``name`` for the call: the cluster's node for the cluster variant, the harness's own otherwise."""

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        saved = harness.AMQP_URL
        harness.AMQP_URL = ADMIN_URL.get(name, saved)
        try:
            return fn(name, *args, **kwargs)
        finally:
            harness.AMQP_URL = saved

    return call


def cluster_verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """The cluster row against the single node's plain quorum row, same run."""
    rate = {(s["system"], s["test"], s["workload"]): s.get("rate") for s in summary}
    lines = []
    for s in summary:
        if s["system"] != CLUSTER:
            continue
        single = rate.get(("sluice-quorum", s["test"], s["workload"]))
        if not (single and s.get("rate")):
            lines.append(f"{CLUSTER} {s['test']}:{s['workload']:<5} no comparison (missing rows)")
            continue
        s["x_single_node"] = round(s["rate"] / single, 3)
        lines.append(
            f"{CLUSTER} {s['test'] + ':' + s['workload']:<14} {s['rate']:>7.0f}/s "
            f"vs sluice-quorum (one node) {single:>7.0f}/s = {s['x_single_node']:.2f}x"
        )
    return lines


def baseline_verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """Each sluice row against its ``-base`` twin (BENCH_BASELINE) in the same run: rate and worker CPU."""
    row = {(s["system"], s["test"], s["workload"]): s for s in summary}
    lines = []
    for s in summary:
        base = row.get((s["system"] + BASE_SUFFIX, s["test"], s["workload"]))
        if base is None or not (s.get("rate") and base.get("rate")):
            continue
        s["x_baseline"] = round(s["rate"] / base["rate"], 3)
        cpu = ""
        if s.get("cpu_us_per_task") and base.get("cpu_us_per_task"):
            s["cpu_x_baseline"] = round(s["cpu_us_per_task"] / base["cpu_us_per_task"], 3)
            cpu = (
                f"; worker CPU {s['cpu_us_per_task']:.0f} vs {base['cpu_us_per_task']:.0f} us/task"
                f" = {s['cpu_x_baseline']:.2f}x"
            )
        lines.append(
            f"{s['system']:<22} {s['test'] + ':' + s['workload']:<14} {s['rate']:>7.0f}/s vs base "
            f"{base['rate']:>7.0f}/s = {s['x_baseline']:.2f}x"
            f" [{'ok' if s['x_baseline'] >= TARGET_BASELINE else f'BELOW {TARGET_BASELINE}x'}]{cpu}"
        )
    return lines


def verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """sluice rows against their own queue type's ceiling in the same run."""
    rate = {(s["system"], s["test"], s["workload"]): s.get("rate") for s in summary}
    lines = []
    for s in summary:
        ceiling = CEILING_OF.get(s["system"])
        if ceiling is None:
            continue
        c = rate.get((ceiling, s["test"], s["workload"]))
        if not (c and s.get("rate")):
            lines.append(f"{s['system']:<15} {s['test']}:{s['workload']:<5} no comparison (missing rows)")
            continue
        s["xceil_same_queue_type"] = round(s["rate"] / c, 3)
        ok = s["xceil_same_queue_type"] >= TARGET_XCEIL
        rss = s.get("peak_rss_mb")
        rss_ok = rss is None or rss < TARGET_RSS_MB
        lines.append(
            f"{s['system']:<15} {s['test'] + ':' + s['workload']:<14} {s['rate']:>7.0f}/s "
            f"vs {ceiling} {c:>7.0f}/s = {s['xceil_same_queue_type']:.2f}x "
            f"[{'ok' if ok else 'BELOW 0.8x'}]"
            + (f"  peak RSS {rss:.1f} MB [{'ok' if rss_ok else 'OVER 60 MB'}]" if rss is not None else "")
        )
    return lines


def policy_verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """Policy-carrying sluice rows against the plain sluice row of the same queue type, same run."""
    rate = {(s["system"], s["test"], s["workload"]): s.get("rate") for s in summary}
    lines = []
    for s in summary:
        if s["system"] not in POLICY_OF or s["test"] == "publish":
            continue
        plain, target = POLICY_OF[s["system"]]
        base = rate.get((plain, s["test"], s["workload"]))
        if not (base and s.get("rate")):
            lines.append(f"{s['system']:<22} {s['test']}:{s['workload']:<5} no comparison (missing rows)")
            continue
        s["x_plain_sluice"] = round(s["rate"] / base, 3)
        ok = s["x_plain_sluice"] >= target
        lines.append(
            f"{s['system']:<22} {s['test'] + ':' + s['workload']:<14} {s['rate']:>7.0f}/s "
            f"vs {plain} {base:>7.0f}/s = {s['x_plain_sluice']:.2f}x [{'ok' if ok else f'BELOW {target}x'}]"
        )
    return lines


def metrics_cost_verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """Plain sluice (telemetry on) against the same worker with telemetry off: at least 0.95x."""
    rate = {(s["system"], s["test"], s["workload"]): s.get("rate") for s in summary}
    lines = []
    for s in summary:
        if not s["system"].endswith("-nometrics") or s["test"] == "publish":
            continue
        on_system = s["system"].removesuffix("-nometrics")
        on, off = rate.get((on_system, s["test"], s["workload"])), s.get("rate")
        if not (on and off):
            continue
        ratio = round(on / off, 3)
        lines.append(
            f"{on_system:<15} {s['test'] + ':' + s['workload']:<14} metrics on {on:>7.0f}/s vs off {off:>7.0f}/s"
            f" = {ratio:.2f}x [{'ok' if ratio >= TARGET_METRICS else f'BELOW {TARGET_METRICS}x'}]"
        )
    return lines


def forget_keys() -> None:
    """Delete the Redis keys the sluice variants left (idempotency claims are kept 10 minutes: a run leaves
    hundreds of thousands, which slow down anything that SCANs the server afterwards)."""
    import redis

    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        for qt in ("classic", "quorum", "cluster"):
            batch = []
            for key in client.scan_iter(match=f"bench_sluice_{qt}:*", count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
    except redis.RedisError as e:
        print(f"could not delete the sluice variants' Redis keys: {e}", file=sys.stderr)
    finally:
        client.close()


def main() -> None:
    add_sluice_variants()
    baseline = os.environ.get("BENCH_BASELINE")
    if baseline:
        tree = Path(baseline).resolve()
        if not (tree / "shared" / "sluice").is_dir():
            sys.exit(f"BENCH_BASELINE={baseline} is not a sluice source tree")
        add_sluice_variants(tree)
    default = ["ceiling", "ceiling-quorum", "sluice-classic", "sluice-quorum", "sluice-quorum-track"]
    chosen = os.environ.get("BENCH_VARIANTS", "")
    if chosen == "all":
        os.environ["BENCH_VARIANTS"] = ",".join(default + harness.DEFAULT_VARIANTS[1:])
    elif not chosen:
        os.environ["BENCH_VARIANTS"] = ",".join(default)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    full = results / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    sys.argv = [sys.argv[0], str(full)]
    on_cluster = CLUSTER in [v.strip() for v in os.environ["BENCH_VARIANTS"].split(",")]
    try:
        with rabbit_cluster.cluster_up() if on_cluster else contextlib.nullcontext():
            harness.main()
    finally:
        forget_keys()
    data = json.loads(full.read_text())
    lines = verdicts(data["summary"])
    policy_lines = policy_verdicts(data["summary"])
    metrics_lines = metrics_cost_verdicts(data["summary"])
    baseline_lines = baseline_verdicts(data["summary"])
    cluster_lines = cluster_verdicts(data["summary"])
    full.write_text(json.dumps(data, indent=1))
    if metrics_lines:
        print("\nsluice with telemetry on against telemetry off, same run:")
        print("\n".join(metrics_lines))
    print("\nsluice against the raw aio-pika ceiling on the same queue type, same run:")
    print("\n".join(lines))
    if policy_lines:
        print("\nsluice with task policies against plain sluice on the same queue type, same run:")
        print("\n".join(policy_lines))
    if cluster_lines:
        print("\nsluice on the 3-node cluster against the single node, quorum queues, same run:")
        print("\n".join(cluster_lines))
    if baseline_lines:
        print(f"\nsluice against the same variant on BENCH_BASELINE={baseline}, same run:")
        print("\n".join(baseline_lines))
    out = os.environ.get("BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(data["summary"], indent=1))
        print(f"summary rows written to {out}")


if __name__ == "__main__":
    main()
