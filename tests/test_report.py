"""The HTML report: self-contained (every image a ``data:`` URI that decodes to a valid PNG, nothing
external), figures also written as PNG, and — when Debian's ``chromium`` is installed — rendered by a real
browser with no broken image and a non-blank screenshot."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from test_compare import RETRAIN, TRAIN, attacked, evaluation, unlearned
from unlearnctl.report import compare, load_runs, write_report
from unlearnctl.report.plots import pareto_front

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def grid(seed: int) -> bytes:
    from unlearnctl.sampling import grid_png

    return grid_png(torch.rand((20, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) * 2 - 1, nrow=10)


@pytest.fixture
def report_inputs(tmp_path) -> list[Path]:
    """Evaluation JSONs (with sibling grids) of a base, retrain, two methods and their attacks, plus a curve."""
    results = {
        "base": evaluation("base", [TRAIN], forget_rate=0.97, fid=10.0),
        "retrain": evaluation("retrain", RETRAIN, forget_rate=0.01, fid=9.0),
        "retrain-attacked": evaluation("retrain-att", attacked(RETRAIN, "retrain"), forget_rate=0.02, fid=9.5),
        "siss": evaluation("siss", unlearned("siss", "base"), forget_rate=0.05, fid=11.0),
        "siss-attacked": evaluation("siss-att", attacked(unlearned("siss", "base"), "siss"), forget_rate=0.40, fid=12.0),
        "naive": evaluation("naive", unlearned("naive", "base"), forget_rate=0.30, fid=9.8),
    }
    paths = []
    for i, (name, result) in enumerate(results.items()):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(result))
        path.with_suffix(".png").write_bytes(grid(i))
        path.with_name(f"{name}-forget.png").write_bytes(grid(100 + i))
        paths.append(path)
    curve = tmp_path / "siss-curve.json"
    curve.write_text(json.dumps({"schema": "unlearnctl.relearn-curve", "model": {"sha256": "siss"}, "metric": {"num_samples": 50},
                                 "points": [{"step": s, "forget_rate": r, "num_samples": 50} for s, r in ((0, .05), (50, .3), (100, .4))]}))
    return [*paths, curve]


def image_sources(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc='([^']*)'", html)


def decode_png(uri: str):
    from PIL import Image

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    payload = base64.b64decode(uri.split(",", 1)[1], validate=True)
    image = Image.open(io.BytesIO(payload))
    image.verify()  # raises on a truncated or corrupt PNG
    assert image.format == "PNG"
    return payload


def test_report_is_self_contained_and_every_image_is_a_valid_png(report_inputs, tmp_path):
    comparison = compare(load_runs(report_inputs))
    written = write_report(comparison, tmp_path / "report.html", title="test report")
    html = (tmp_path / "report.html").read_text()
    sources = image_sources(html)
    # 3 figures + 2 grids for each of the 6 runs
    assert len(sources) == 3 + 2 * 6
    assert html.count("<img") == len(sources)
    payloads = [decode_png(uri) for uri in sources]
    # the figures are also files next to the report, byte-identical to the embedded ones
    for name in ("pareto", "attack", "curves"):
        png = tmp_path / f"report-{name}.png"
        assert png in written and png.read_bytes() in payloads
    for pattern in ("http://", "https://", "<script", "<link", "src='file:"):
        assert pattern not in html
    # table, provenance and lineage are there
    assert "digits — forget class 8" in html and "reference: <b>retrain</b>" in html
    assert "siss-attacked ↺" in html and "+0.350" in html  # relearn gap of siss
    assert html.count("<details>") == 6 and "relearn-attack" in html


def test_report_without_grids_or_attacks_still_renders(tmp_path):
    path = tmp_path / "only.json"
    path.write_text(json.dumps(evaluation("s", unlearned("siss", "b"), forget_rate=0.1, fid=3.0)))
    write_report(compare(load_runs([path])), tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "No sample grids" in html
    assert len(image_sources(html)) == 1  # the Pareto plot only
    assert not (tmp_path / "r-attack.png").exists()


def test_pareto_front():
    points = [(0.1, 10.0), (0.5, 5.0), (0.3, 12.0), (0.9, 4.0), (0.1, 11.0)]
    assert pareto_front(points) == [0, 1, 3]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report_inputs, tmp_path):
    """A real browser loads every image (none broken) and the screenshot is not blank."""
    from PIL import Image

    write_report(compare(load_runs(report_inputs)), tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    probe = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
             " document.body.dataset.images = all.length;"
             " document.body.dataset.broken = all.filter(i => !(i.complete && i.naturalWidth > 0)).length; });</script>")
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                              "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    assert re.search(r'data-images="15"', dom.stdout), dom.stdout[-500:] + dom.stderr[-500:]
    assert 'data-broken="0"' in dom.stdout

    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                        "--window-size=1400,3000", (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 3000)
    histogram = image.histogram()
    dark = sum(histogram[:200]) / (image.size[0] * image.size[1])
    assert dark > 0.05, f"only {dark:.1%} of the screenshot is not near-white: the report did not render"
