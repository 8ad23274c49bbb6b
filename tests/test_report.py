"""The HTML report: self-contained (every image a ``data:`` URI that decodes to a valid PNG, nothing
external), figures also written as PNG, and — when Debian's ``chromium`` is installed — rendered by a real
browser with no broken image and a non-blank screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
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


def require_chromium() -> None:
    """Skip without Chromium on a developer machine; fail in CI (``CI`` or ``UNLEARNCTL_REQUIRE_BROWSER=1``, set by
    .ci/run, which installs Debian's ``chromium``), so the browser check can never be skipped silently there."""
    if CHROMIUM is not None:
        return
    message = "chromium is not installed (Debian: apt-get install -y chromium)"
    if os.environ.get("UNLEARNCTL_REQUIRE_BROWSER") == "1" or os.environ.get("CI"):
        pytest.fail(message + "; CI requires it (UNLEARNCTL_REQUIRE_BROWSER=1 or CI is set)")
    pytest.skip(message)


def test_report_renders_in_headless_chromium(report_inputs, tmp_path):
    """A real browser loads every image (none broken) and the screenshot is not blank."""
    from PIL import Image

    require_chromium()

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
    assert dark > 0.02, f"only {dark:.1%} of the screenshot is not near-white: the report did not render"  # blank: ~0%


def test_colours_show_the_distance_to_retrain_in_both_directions(report_inputs, tmp_path):
    """siss forgets more than retrain (0.05 vs 0.01 is within ±0.03? no: +0.04) and naive less (0.30): both are red;
    an AUC difference beyond ±0.05 is red too, whichever its sign."""
    from unlearnctl.report.html import agreement

    data = json.loads((tmp_path / "siss.json").read_text())
    data["membership_auc"] = 0.499  # retrain's is 0.6: −0.101
    (tmp_path / "siss.json").write_text(json.dumps(data))
    comparison = compare(load_runs(report_inputs))
    scenario = comparison.scenarios[0]
    reference = scenario.find("retrain")
    assert agreement("forget_rate", scenario.find("siss"), reference) == ("differs", False)
    assert agreement("forget_rate", scenario.find("naive"), reference) == ("differs", False)
    assert agreement("membership_auc", scenario.find("siss"), reference) == ("differs", False)
    assert agreement("membership_auc", scenario.find("naive"), reference) == ("matches", False)
    write_report(comparison, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "<span class='delta differs'>(-0.101)</span>" in html
    assert "span.better" not in html and "'delta better'" not in html


def test_the_reading_uses_intervals_when_the_evaluations_carry_them(report_inputs, tmp_path):
    write_report(compare(load_runs(report_inputs)), tmp_path / "plain.html")
    plain = (tmp_path / "plain.html").read_text()
    assert "95% intervals are unavailable" in plain and "within the tolerances below" in plain
    assert re.search(r"Still draw the forgotten data more often than retrain \(0\.010\): .*naive</b> 0\.300", plain)
    intervals = {"retrain": {"forget_rate": (0.0, 0.06), "retain_accuracy": (0.9, 1.0), "fid": (8, 10)},
                 "siss": {"forget_rate": (0.02, 0.12), "retain_accuracy": (0.9, 1.0), "fid": (9.5, 12)},
                 "naive": {"forget_rate": (0.2, 0.4), "retain_accuracy": (0.9, 1.0), "fid": (9, 11)}}
    for name, keys in intervals.items():
        path = tmp_path / f"{name}.json"
        data = json.loads(path.read_text())
        for key, (low, high) in keys.items():
            data[f"{key}_ci95_low"], data[f"{key}_ci95_high"] = low, high
        path.write_text(json.dumps(data))
    write_report(compare(load_runs(report_inputs)), tmp_path / "ci.html")
    html = (tmp_path / "ci.html").read_text()
    assert "intervals are unavailable" not in html
    assert "Match retrain on forget rate, retain acc, FID (95% intervals overlap): <b>siss</b>." in html


def test_recipe_and_stage_seconds_are_tables_not_json(report_inputs, tmp_path):
    recipe = {"recipe fields": {"preset": "tiny", "methods": ["siss", "naive"]}, "stage seconds": {"train base": 1.5, "unlearn siss": 2.0}}
    write_report(compare(load_runs(report_inputs)), tmp_path / "report.html", recipe=recipe)
    html = (tmp_path / "report.html").read_text()
    section = html.split("<h3>Recipe</h3>", 1)[1].split("<h2>", 1)[0]
    assert "{" not in section and "siss, naive" in section
    assert "<td class='text'>train base</td><td>1.5</td>" in section and "<th>3.5</th>" in section


def test_report_shows_seed_intervals_and_relearning_areas(report_inputs, tmp_path):
    from test_compare import SPEC_8, curve_file
    from unlearnctl.metrics.intervals import t_interval

    def salun(seed: int) -> list[dict]:  # lineages that differ only in seeds (params_digest equal)
        return [{**TRAIN, "params_digest": "t"}, {"command": "unlearn", "method": "salun", "seed": seed, "forget": SPEC_8,
                                                  "parent_sha256": "base", "params_digest": "p"}]

    inputs = list(report_inputs)
    for seed, rate in ((0, 0.10), (1, 0.20), (2, 0.16)):
        inputs.append(tmp_path / f"salun-{seed}.json")
        inputs[-1].write_text(json.dumps(evaluation(f"salun-{seed}", salun(seed), forget_rate=rate, fid=10.0 + seed)))
    inputs += [curve_file(tmp_path / "c-retrain.json", "retrain", "retrain-att", "retain", 1e-4, [(0, 0.0), (100, 0.1)], n=100),
               curve_file(tmp_path / "c-siss.json", "siss", "siss-att", "retain", 1e-4, [(0, 0.05), (100, 0.45)], n=100)]
    write_report(compare(load_runs(inputs)), tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    mean, low, high = t_interval([0.10, 0.20, 0.16])
    assert "salun ×3 seeds" in html and f"{mean:.3f} [{low:.3f}, {high:.3f}]" in html  # the seed row shows its interval
    section = html.split("Relearning area: mean forget rate", 1)[1].split("</table>", 1)[0]
    assert "retrain (reference)" in section and "retain, lr 0.0001, 100 steps" in section
    assert "<td>0.250 [" in section and "+0.200 [" in section  # siss's area 0.25, retrain's 0.05
    assert "<dt>relearning area</dt>" in html
    assert "Relearning area above retrain's under the same attack (Δ's interval above 0): <b>siss</b> +0.200" in html


def test_every_shown_column_is_explained(report_inputs, tmp_path):
    from unlearnctl.report.html import COLUMN_HELP

    write_report(compare(load_runs(report_inputs)), tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    for title in ("forget rate", "retain acc", "FID", "KID", "precision", "recall", "MIA AUC", "relearn gap", "samples"):
        assert f"<dt>{title}</dt>" in html and title in COLUMN_HELP
    assert "Look at the forget-condition grids" in html


def test_grids_are_titled_labelled_and_readable():
    from PIL import Image

    from unlearnctl.sampling import grid_png

    images = torch.rand((30, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = Image.open(io.BytesIO(grid_png(images, nrow=10)))
    labelled = Image.open(io.BytesIO(grid_png(images, nrow=10, title="siss: retained classes", row_labels=["0", "1", "2"])))
    assert plain.width >= 600
    assert labelled.width > plain.width and labelled.height > plain.height  # room for the labels and the title


def test_an_outlier_is_clipped_off_the_quality_axis():
    from unlearnctl.report.plots import robust_limit

    top = robust_limit([9.74, 9.68, 11.88, 14.25, 8.15, 450.67])
    assert 14.25 < top < 20
    assert robust_limit([9.7, 9.8, 12.0, 14.0]) is None
