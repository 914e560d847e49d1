"""The live page in headless Chromium: the DOM holds the fleet's data after its script ran, and the
screenshot is a drawn page (charts and tables), not a blank one."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_helpers import Service, end, start_child, until

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
