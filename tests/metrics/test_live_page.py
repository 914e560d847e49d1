"""The live page in headless Chromium: the DOM holds the fleet's data after its script ran, and the
screenshot is a drawn page (charts and tables), not a blank one."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from fleet_helpers import SLUICE, Service, end, env_for, start_child, start_service, until

from sluice.settings import Settings
from sluice.topology import DELAY_TIERS_MS, Topology

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium`", pytrace=False)
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB(A) pixels of an 8-bit, non-interlaced truecolour PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, pixels = bytearray(stride), []
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.extend(bytes(line[x : x + 3]) for x in range(0, stride, bpp))
        prev = line
    return width, height, pixels


@pytest.fixture
def busy(service: Service, env: dict[str, str]) -> Iterator[Service]:
    worker = start_child(env, "worker", 250, 9, 0)
    try:
        until(lambda: service.summary()["workers_alive"] == 1)
        until(lambda: len(service.summary()["history"]) >= 3)
        yield service
    finally:
        end(worker)


def test_page_shows_the_data_after_its_script_ran(busy: Service, tmp_path: Path) -> None:
    done = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", busy.url + "/")
    dom = done.stdout
    assert 'data-ready="1"' in dom, done.stderr[-2000:]
    assert re.search(r'<b id="workers">1</b>', dom)
    assert re.search(r'<b id="completed">259</b>', dom)
    prefix = busy.summary()["prefix"]
    assert f"<td>{prefix}.q.default</td>" in dom and f"<td>{prefix}.dlq</td>" in dom
    legend = re.search(r'<div class="legend" id="outcomes-legend">(.*?)</div>', dom)
    assert legend and re.search(r"</i>success [0-9.e+-]+</span>", legend.group(1)), legend
    assert re.search(r"</i>failed [0-9.e+-]+</span>", legend.group(1))


def test_screenshot_is_a_drawn_page(busy: Service, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    done = chromium(
        tmp_path,
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        busy.url + "/",
    )
    assert shot.exists(), done.stderr[-2000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 900)
    colours = set(pixels)
    white = sum(p == b"\xff\xff\xff" for p in pixels) / len(pixels)
    # header bar, text, grid lines and coloured chart lines: a blank or unstyled page has a handful
    assert len(colours) > 200, len(colours)
    assert white < 0.9, white
    chart_colours = {b"\x25\x63\xeb", b"\x16\xa3\x4a"}  # throughput: published (blue), completed (green)
    assert chart_colours & colours, "no chart line drawn"


# ---- the header, the counts' meaning, the delay tiers (issue 10, item 7)

CHILD = """
import asyncio, signal, sys
from sluice.settings import Settings
from sluice.telemetry import SnapshotPublisher, Telemetry

async def main(kind, published, outcomes):
    t = Telemetry(kind)
    for pair in outcomes:
        outcome, n = pair.split("=")
        for _ in range(int(n)):
            t.task_done("demo.echo", outcome, queue="default", run_seconds=0.01, wait_seconds=0.1)
    if published:
        t.published("default", published)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with SnapshotPublisher(Settings(), t, interval=0.5) as pub:
        while pub.sent == 0:
            await asyncio.sleep(0.05)
        print("sent", flush=True)
        await stop.wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
"""


def start_outcomes(env: dict[str, str], kind: str, published: int, **outcomes: int) -> subprocess.Popen[str]:
    """A process sending real snapshots with these outcome counts; returns once the first one is sent."""
    args = [f"{o}={n}" for o, n in outcomes.items()]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(published), *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "sent", f"child did not start (exit {proc.poll()})"
    return proc


def stop_child(proc: subprocess.Popen[str]) -> None:
    """SIGTERM: the child sends its final snapshot and exits 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert proc.stdout is not None
    proc.stdout.close()


def page(tmp_path: Path, url: str) -> str:
    done = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url + "/")
    assert 'data-ready="1"' in done.stdout, done.stderr[-2000:]
    return done.stdout


def element(dom: str, ident: str) -> str:
    """The text inside the element with this id (tags removed)."""
    m = re.search(rf'<(\w+)[^>]* id="{ident}"[^>]*>(.*?)</\1>', dom, re.S)
    assert m, f"no element #{ident}"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(2)))


def table_rows(dom: str, body: str) -> list[list[str]]:
    m = re.search(rf'<tbody id="{body}">(.*?)</tbody>', dom, re.S)
    assert m, f"no table body #{body}"
    return [
        [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)
    ]


def hhmm(epoch: float) -> str:
    return time.strftime("%H:%M", time.gmtime(epoch))


def test_header_reads_sluice_once_with_the_default_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default prefix "sluice" on brokers that are not there: the page still renders (broker DOWN),
    # and nothing on the shared brokers is touched
    env = env_for(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/", f"redis://127.0.0.1:{free_port()}/0", "sluice"
    )
    svc = start_service(env, tmp_path / "metrics.log", "--interval", "0.5", "--scrape-timeout", "0.5")
    try:
        until(lambda: svc.summary()["broker_up"] is False)
        dom = page(tmp_path, svc.url)
    finally:
        assert svc.stop() == 0, svc.log.read_text()
    header = re.search(r"<header>(.*?)</header>", dom, re.S)
    assert header
    words = re.sub(r"<[^>]+>", " ", header.group(1)).split()
    assert words[0] == "sluice" and "sluice" not in words[1:], words  # it read "sluice sluice"
    assert element(dom, "broker") == "DOWN"
    assert re.search(r"<title>sluice</title>", dom)


def test_header_names_another_prefix_as_the_prefix(service: Service, tmp_path: Path) -> None:
    until(lambda: service.summary()["broker_up"])
    dom = page(tmp_path, service.url)
    prefix = service.summary()["prefix"]
    assert element(dom, "brand") == "sluice"
    assert element(dom, "prefix-stat").split() == ["prefix", prefix]
    assert f"<title>sluice · {prefix}</title>" in dom


def test_completed_counts_finished_tasks_not_retries_or_deferrals(
    service: Service, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 tasks published; each ran through retries and rate-limit deferrals before it finished
    producer = start_outcomes(env, "producer", 40)
    worker = start_outcomes(
        env,
        "worker",
        0,
        success=30,
        failed=4,
        dead_lettered=3,
        deduplicated=3,
        retried=50,
        deferred_limit=70,
        deferred=9,
    )
    try:
        until(lambda: service.summary()["totals"]["published"] == 40)
        until(lambda: sum(service.summary()["totals"]["completed"].values()) == 169)
        monkeypatch.setenv("TZ", "UTC")
        dom = page(tmp_path, service.url)
    finally:
        stop_child(worker)
        stop_child(producer)
    assert element(dom, "published") == "40"
    assert element(dom, "completed") == "40"  # it read 169: every delivery, retries and deferrals too
    started = service.summary()["started"]
    assert f"since {hhmm(started)} (metrics service start)" in element(dom, "since")


def test_counts_after_a_metrics_restart_say_what_they_cover(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = start_service(env, tmp_path / "first.log", "--alive-after", "2", "--interval", "0.5")
    worker = start_outcomes(env, "worker", 0, success=250, failed=9)
    try:
        producer = start_outcomes(env, "producer", 259)
        stop_child(producer)  # a `sluice publish` run: it ends, its final snapshot counted
        until(lambda: first.summary()["totals"]["published"] == 259)
        until(lambda: sum(first.summary()["totals"]["completed"].values()) == 259)
        assert first.stop() == 0
        # the restarted service never saw the publisher; the worker's counts go on from its own start
        second = start_service(env, tmp_path / "second.log", "--alive-after", "2", "--interval", "0.5")
        try:
            until(lambda: second.summary()["workers_alive"] == 1)
            monkeypatch.setenv("TZ", "UTC")
            dom = page(tmp_path, second.url)
            doc = second.summary()
        finally:
            assert second.stop() == 0, second.log.read_text()
    finally:
        stop_child(worker)
    assert (element(dom, "published"), element(dom, "completed")) == ("0", "259")
    since = element(dom, "since")  # the page says what the figures cover
    (proc,) = doc["processes"]
    assert proc["started"] < doc["started"]
    assert f"since {hhmm(doc['started'])} (metrics service start)" in since, since
    assert f"1 process started earlier ({hhmm(proc['started'])}) counts from its own start" in since, since


async def test_empty_delay_tiers_fold_into_one_row(
    service: Service, topology: Settings, tmp_path: Path
) -> None:
    topo = Topology.from_settings(topology)
    async with await aio_pika.connect(topology.amqp_url) as conn:
        channel = await conn.channel(publisher_confirms=True)
        delay = await topo.declare_delays(channel)
        longest = DELAY_TIERS_MS[-1]
        await delay.publish(
            aio_pika.Message(b"{}", message_id="held", delivery_mode=2),
            routing_key=topo.delay_routing_key(longest, "default"),
        )

    def rows() -> list[dict[str, Any]] | None:
        q = service.summary()["queues"]
        return q if sum(r["kind"] == "delay" for r in q) == len(DELAY_TIERS_MS) else None

    summary_rows = await asyncio.to_thread(until, rows)
    held = [r for r in summary_rows if r["kind"] == "delay" and r["messages"]]
    assert [r["queue"] for r in held] == [topo.delay_queue(longest)]
    dom = await asyncio.to_thread(page, tmp_path, service.url)
    table = table_rows(dom, "queues")
    delay_rows = [r for r in table if r[1] == "delay"]
    assert [r[:5] for r in delay_rows] == [
        [topo.delay_queue(longest), "delay", "1", "0", "0"],
        [f"delay tiers: {len(DELAY_TIERS_MS) - 1} empty", "delay", "0", "0", "0"],
    ], table
    assert delay_rows[1][5] == "0", table
    assert [r[0] for r in table if r[1] != "delay"] == [topo.queue("default"), topo.dead_queue]


def test_page_shows_the_schedules_and_their_leader(
    service: Service, env: dict[str, str], tmp_path: Path
) -> None:
    """A schedule added with `sluice schedule add` is a row of the page's schedules table; with no
    scheduler running, the leader reads NONE."""
    name = f"page-{env['SLUICE_PREFIX']}"
    add = [
        SLUICE,
        "schedule",
        "add",
        name,
        "--task",
        "fleet.noop",
        "--cron",
        "0 6 * * *",
        "--tz",
        "Europe/Paris",
    ]
    done = subprocess.run(add, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    try:
        until(lambda: service.summary()["scheduler"]["schedules"] or None)
        dom = page(tmp_path, service.url)
        rows = table_rows(dom, "schedules")
        assert [r[:3] for r in rows] == [[name, "fleet.noop", "0 6 * * * Europe/Paris"]], rows
        assert rows[0][3].endswith("Z") and rows[0][4:] == ["-", "-", "0", "0", "0", "-"]
        assert element(dom, "sched-leader") == "leader: NONE (nothing fires)"
    finally:
        rm = subprocess.run(
            [SLUICE, "schedule", "rm", name], env=env, capture_output=True, text=True, timeout=30
        )
        assert rm.returncode == 0, rm.stderr
