"""The HTML report in a real browser (Debian's chromium, headless): every figure renders, no script error.

Slow (``make test-all``): installs ``chromium`` with apt-get when it is missing and the test runs as root;
otherwise it skips and says why. ``ANALYSIS_REPORT=<report.html>`` checks an existing report (e.g. the one
``make analysis SCALE=tiny`` wrote) instead of one built from fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anomaly_vlm.analysis.run import run_analyses

from .conftest import add_predictions

pytestmark = pytest.mark.slow

#: Injected first into <head>: records every error (script errors and failed resources, which do not
#: bubble but are seen in the capture phase) and, after load, the state of every image.
CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var what = (e.target && (e.target.alt || e.target.src)) || "?";
  window.__errors.push(e.message || ("failed to load " + what));
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                     .map(function (i) { return i.alt; });
  var out = document.createElement("pre");
  out.id = "__check";
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; })
                     .map(function (i) { return i.alt; });
  var sections = Array.prototype.slice.call(document.querySelectorAll("h2[id]"))
                      .map(function (h) { return h.id; });
  var external = images.filter(function (i) { return i.getAttribute("src").indexOf("data:image/") !== 0; })
                       .map(function (i) { return i.alt; });
  var texts = function (selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector))
                .map(function (e) { return e.textContent; });
  };
  out.textContent = JSON.stringify({images: images.length, broken: broken, errors: window.__errors,
                                    loaded: loaded, sections: sections, external: external,
                                    headers: texts("th"), titles: texts("h3")});
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root or no apt-get)")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {done.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


def _render(browser: str, report: Path, tmp_path: Path, extra_body: str = "") -> dict:
    page = tmp_path / f"checked_{report.name}"
    text = report.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + CHECKER, 1).replace("</body>", extra_body + "</body>", 1)
    page.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    match = re.search(r'<pre id="__check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page did not finish loading:\n{done.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _report(results, tmp_path: Path) -> tuple[Path, int]:
    if os.environ.get("ANALYSIS_REPORT"):
        report = Path(os.environ["ANALYSIS_REPORT"])
        return report, report.read_text().count('<img src="data:image/png;base64,')
    for block, score in ((1, 0.5), (2, 0.7)):
        results.write("layers-musc", method="musc", score=score, config={"method.layers": [block]})
    results.write(
        "shots-winclip-zero", method="winclip", score=0.6, dataset="mvtec", efficiency={"ms_per_image": 4}
    )
    for draw, score in enumerate((0.7, 0.75, 0.8)):
        results.write(
            "shots-winclip", method="winclip", score=score, shots=2, reference_seed=draw, dataset="mvtec"
        )
    results.write(
        "crossdomain-aprillab", method="aprillab", score=0.8, train_dataset="synthetic",
        config={"train_data.categories": ["brick"], "data.categories": ["nut"]},
    )  # fmt: skip
    # Limitations: a clean run with saved predictions (defect types, sizes, gallery) and a corrupted twin.
    add_predictions(results.write("limitations-clip", method="clip", score=0.8))
    results.write(
        "limitations-clip-corruptions",
        method="clip",
        score=0.6,
        config={"datamodule.test_corruption": "blur", "datamodule.test_corruption_strength": 1},
    )
    # Alignment: two strategies of the grid, the CLIP baseline and WinCLIP on the same images.
    for strategy, score in (("none", 0.6), ("windows", 0.7)):
        results.write(
            "alignment-grid", method="alignment", score=score, config={"method.alignment": strategy},
            efficiency={"trainable_parameters": 0, "ms_per_image": 5.0},
        )  # fmt: skip
    results.write("alignment-clip", method="clip", score=0.55)
    results.write("alignment-winclip", method="winclip", score=0.75)
    sections, _, report = run_analyses(
        ["layers", "shots", "crossdomain", "limitations", "alignment"],
        "tiny",
        tmp_path / "reports",
        results.root,
        run=False,
        report=True,
    )
    return report, sum(len(section.figures) for section in sections)


def test_every_figure_of_the_report_renders_without_errors(results, tmp_path: Path) -> None:
    browser = _browser()
    report, figures = _report(results, tmp_path)
    assert figures > 0
    state = _render(browser, report, tmp_path)
    assert state["images"] == figures
    assert state["broken"] == [] and state["errors"] == []
    # Every image is embedded in the page (a report is one self-contained file).
    assert state["external"] == []
    # The limitations section is there, each of its parts drawn (not only listed), the failure gallery
    # with its images, and the known weaknesses in a table and as the method-selection table's column.
    assert "limitations" in state["sections"] and "selection" in state["sections"]
    for part in ("Defect types: ", "Defect size: ", "Categories: ", "Corruptions: ", "Gallery: "):
        assert any(alt.startswith(part) for alt in state["loaded"]), part
    assert any(title.startswith("Known weaknesses per method") for title in state["titles"])
    # The selection table needs the shots/resolution/efficiency results: always in the fixture report, in
    # an ANALYSIS_REPORT of other analyses only when it says so.
    selects = "No results to select from yet." not in report.read_text(encoding="utf-8")
    assert selects or os.environ.get("ANALYSIS_REPORT")
    if selects:
        assert "known weaknesses of the winner's method" in state["headers"]
    # The alignment section draws its strategy x metric grid, with its table and the attribution.
    assert "alignment" in state["sections"]
    assert any(alt.startswith("Alignment: strategy x metric") for alt in state["loaded"])
    assert "Alignment: metrics and costs per strategy" in state["titles"]
    # The check itself can fail: a broken image is seen as broken and as an error.
    bad = _render(
        browser, report, tmp_path, '<img alt="deliberately broken" src="data:image/png;base64,AAAA">'
    )
    assert bad["broken"] == ["deliberately broken"] and bad["errors"]
