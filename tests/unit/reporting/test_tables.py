"""Tables and plots from fabricated results.json files (no model runs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from anomaly_vlm.metrics import METRIC_NAMES
from anomaly_vlm.reporting import tables
from anomaly_vlm.reporting.results import write_json_atomic


def fake_result(folder: Path, method: str, dataset: str, shots: int, seed: int, base: float, **extra) -> Path:
    # Every category of the dataset (a subset would be a partial row without Δ); mean = base - 0.01.
    categories = {c: base - 0.01 for c in tables.full_categories(dataset) or ("bottle", "cable")}
    categories.update(bottle=base, cable=base - 0.02)
    per_category = {c: {m: v + 0.001 * seed for m in METRIC_NAMES} for c, v in categories.items()}
    mean = {m: sum(per_category[c][m] for c in categories) / len(categories) for m in METRIC_NAMES}
    payload = {
        "status": "complete",
        "method": method,
        "backbone": "vit_b16_plus_240",
        "prompts": "winclip",
        "dataset": dataset,
        "train_dataset": extra.pop("train_dataset", None),
        "shots": shots,
        "seed": seed,
        "metrics": {"mean": mean, "per_category": per_category},
        "efficiency": {
            "ms_per_image": 10.0 + shots,
            "images_per_s": 90.0,
            "flops_per_image": 3e10,
            "total_parameters": 2e8,
            "trainable_parameters": 0,
        },
        "created": f"2026-01-01T00:00:0{seed}",
    }
    payload.update(extra)
    return write_json_atomic(folder / f"method={method},seed={seed},shots={shots}" / "results.json", payload)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "outputs" / "train" / "multiruns" / "data=mvtec"
    for shots, base in ((0, 0.90), (1, 0.93)):
        for seed in (0, 1, 2):
            fake_result(root, "winclip", "mvtec", shots, seed, base)
    # An unfinished job must be ignored.
    write_json_atomic(root / "method=winclip,seed=9,shots=4" / "results.json", {"status": "running"})
    return root


def test_published_numbers_are_complete_and_sourced() -> None:
    entries = tables.load_published()
    keys = {(e["method"], e["dataset"], e["shots"]) for e in entries}
    for method in ("winclip", "aprillab"):
        for dataset in ("mvtec", "visa"):
            assert {(method, dataset, s) for s in (0, 1, 2, 4)} <= keys
    assert {("anomalyclip", "mvtec", 0), ("anomalyclip", "visa", 0)} <= keys
    assert all(e["source"] and set(e["metrics"]) <= set(METRIC_NAMES) for e in entries)
    # APRIL-GAN's paper orders pixel columns AUROC/F1max/PRO: 0-shot MVTec F1max 43.3, PRO 44.0.
    assert tables.published_value(entries, "aprillab", "mvtec", 0, "pixel_f1max")[0] == 43.3
    assert tables.published_value(entries, "aprillab", "mvtec", 0, "pixel_aupro")[0] == 44.0
    assert tables.published_value(entries, "winclip", "visa", 4, "pixel_aupro")[0] == 87.6
    assert tables.published_value(entries, "anomalyclip", "mvtec", 0, "image_f1max") == (None, None)


def test_summary_has_mean_std_published_and_delta(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    tables.make_tables([sweep], out)
    markdown = (out / "mvtec_summary.md").read_text()
    # 0-shot image AUROC: categories 90 and 88 -> 89.0 (+0.1 per seed) -> 89.1 ± 0.1; paper 91.8.
    assert "89.1 ± 0.1 (91.8, Δ -2.7)" in markdown
    # P-AP has no published WinCLIP value: no bracket.
    rows = list(csv.DictReader((out / "mvtec_summary.csv").open()))
    assert [(r["method"], r["shots"], r["seeds"]) for r in rows] == [
        ("winclip", "0", "3"),
        ("winclip", "1", "3"),
    ]
    assert rows[1]["image_auroc_published"] == "93.10"
    assert float(rows[1]["image_auroc_delta"]) == pytest.approx(92.1 - 93.1, abs=1e-6)
    assert rows[0]["pixel_ap_published"] == "" and rows[0]["pixel_ap_delta"] == ""
    assert float(rows[0]["flops_per_image"]) == pytest.approx(30.0)  # GFLOPs
    header_cells = markdown.splitlines()[4].count("|")
    assert all(line.count("|") == header_cells for line in markdown.splitlines() if line.startswith("|"))
    assert "\\begin{tabular}" in (out / "mvtec_summary.tex").read_text()
    per_category = (out / "mvtec_per_category.md").read_text()
    assert "| bottle | 90.1 ± 0.1 |" in per_category and "| cable |" in per_category
    for name in (
        "mvtec_per_category_image_auroc.png",
        "mvtec_accuracy_vs_latency.png",
        "mvtec_metric_vs_shots.png",
    ):
        assert (out / "plots" / name).stat().st_size > 1000


def test_newest_result_of_a_seed_wins_and_latest_sweep(sweep: Path, tmp_path: Path) -> None:
    other = sweep.parent / "later"
    fake_result(other, "winclip", "mvtec", 0, 0, 0.50, created="2027-01-01T00:00:00")
    groups = tables.collect([sweep, other])
    zero = next(g for g in groups if g.shots == 0)
    assert len(zero.runs) == 3 and min(zero.metric_values("image_auroc")) == pytest.approx(49.0)
    assert tables.latest_sweeps(tmp_path / "outputs") == [other]


def test_no_results_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete results.json"):
        tables.make_tables([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tables.make_tables([tmp_path / "missing"], tmp_path / "out")


def test_cli_writes_tables(sweep: Path, tmp_path: Path, capsys) -> None:
    assert tables.main(["--results", str(sweep), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert (tmp_path / "r" / "mvtec_summary.md").exists() and not (tmp_path / "r" / "plots").exists()
    assert json.loads(json.dumps(tables.load_published()))  # the packaged file is valid JSON


def test_reference_draws_are_replicates_even_with_one_training_seed(tmp_path: Path) -> None:
    root = tmp_path / "draws"
    for draw in (0, 1, 2):
        fake_result(root / f"r{draw}", "aprillab", "mvtec", 4, 111, 0.9 + 0.01 * draw, reference_seed=draw)
    (group,) = tables.collect([root])
    assert group.seeds == [(111, 0), (111, 1), (111, 2)]
    assert len(group.metric_values("image_auroc")) == 3


# ----- first-hour defects -----------------------------------------------------------------------------------
def _with_config(path: Path, **config) -> None:
    payload = json.loads(path.read_text())
    payload["config"] = {"seed": payload["seed"], "paths": {"output_dir": str(path.parent)}, **config}
    # Per-job values (the job's own folder) never make runs different configurations.
    payload["config"]["trainer"]["default_root_dir"] = str(path.parent)
    payload["config"]["method"] = {"text_cache": str(path.parent / "cache")}
    write_json_atomic(path, payload)


def test_missing_or_empty_results_folder_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for folder in ("missing", "empty"):
        assert tables.main(["--results", str(tmp_path / folder), "--out", str(tmp_path / "r")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / folder) in err[0]


def test_sweeps_that_differ_in_config_are_separate_rows(tmp_path: Path) -> None:
    for seed in (0, 1):
        a = fake_result(tmp_path / "a", "winclip", "mvtec", 0, seed, 0.9)
        _with_config(a, data={"categories": None}, trainer={"max_epochs": 1})
        b = fake_result(tmp_path / "b", "winclip", "mvtec", 0, seed, 0.8)
        _with_config(b, data={"categories": ["bottle"]}, trainer={"max_epochs": 1})
    groups = tables.collect([tmp_path / "a", tmp_path / "b"])
    assert len(groups) == 2 and all(len(group.runs) == 2 for group in groups)  # seeds are replicates
    labels = sorted(group.method_label for group in groups)
    assert labels == ["winclip [data.categories=None]", "winclip [data.categories=['bottle']]"]


def test_untrained_runs_are_labelled_and_never_replace_trained_ones(tmp_path: Path) -> None:
    fake_result(tmp_path / "t", "aprillab", "mvtec", 0, 0, 0.9, train_dataset="visa")
    fake_result(tmp_path / "u", "aprillab", "mvtec", 0, 0, 0.5, untrained=True)
    groups = tables.collect([tmp_path])
    assert sorted(group.method_label for group in groups) == [
        "aprillab (trained on visa)",
        "aprillab (untrained)",
    ]
    rows = {row["method_label"]: row for row in tables.summary_rows(groups, tables.load_published())}
    assert rows["aprillab (untrained)"]["image_auroc"]["published"] is None  # no Δ against trained numbers
    assert rows["aprillab (trained on visa)"]["image_auroc"]["delta"] is not None


def test_a_subset_of_the_published_categories_is_a_partial_row(tmp_path: Path) -> None:
    path = fake_result(tmp_path, "winclip", "visa", 0, 0, 0.9)
    payload = json.loads(path.read_text())
    payload["metrics"]["per_category"] = {"candle": payload["metrics"]["per_category"]["candle"]}
    write_json_atomic(path, payload)
    tables.make_tables([tmp_path], tmp_path / "r", plots=False)
    markdown = (tmp_path / "r" / "visa_summary.md").read_text()
    assert "winclip (partial: 1/12 categories)" in markdown and "Δ —" in markdown
    assert "Δ -" not in markdown and "Δ +" not in markdown
    assert "rows marked partial cover only some categories" in markdown


def test_deltas_and_the_published_note(tmp_path: Path) -> None:
    assert tables.format_delta(-0.04) == "+0.0" and tables.format_delta(-0.06) == "-0.1"
    assert tables.format_delta(None) == "—"
    fake_result(tmp_path / "s", "clip", "synthetic", 0, 0, 0.9)  # no published numbers for this
    tables.make_tables([tmp_path / "s"], tmp_path / "r", plots=False)
    assert "published" not in (tmp_path / "r" / "synthetic_summary.md").read_text()


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("latencies", [(3.1, 4.2, 5.5, 7.9), (0.4, 12.0, 2500.0), (20.0, 21.0)])
def test_latency_axis_labels_do_not_overlap(latencies) -> None:
    from anomaly_vlm.reporting import plots

    rows = [
        {
            "method": "m",
            "method_label": f"m{i}",
            "shots": 0,
            "backbone": "b",
            "ms_per_image": latency,
            "image_auroc": {"mean": 80.0 + i},
        }
        for i, latency in enumerate(latencies)
    ]
    figure = plots.accuracy_vs_latency_figure(rows, "d")
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    labels = [
        label
        for label in axis.get_xticklabels() + axis.get_xticklabels(minor=True)
        if label.get_visible()
        and label.get_text()
        and axis.get_xlim()[0] <= label.get_position()[0] <= axis.get_xlim()[1]
    ]
    assert len(labels) >= 2
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plots.plt.close(figure)


def test_plot_labels_name_every_dimension_that_varies():
    from anomaly_vlm.reporting.plots import config_labels

    base = {"method": "clip", "shots": 0, "backbone": "tiny", "prompts": "two_prompt"}
    prompt_sweep = [{**base, "prompts": name} for name in ("two_prompt", "winclip_cpe", "aprilgan")]
    labels = config_labels(prompt_sweep)
    assert len(set(labels)) == 3 and all("prompts=" in label for label in labels)
    assert config_labels([base]) == ["clip 0-shot (tiny)"]
    # the method label carries the training data (and variants) when the table has them
    trained = config_labels([{**base, "method_label": "clip (trained on visa)"}, base])
    assert trained == ["clip (trained on visa) 0-shot (tiny)", "clip 0-shot (tiny)"]


def test_transductive_runs_are_marked_and_listed_apart_from_inductive_ones(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    fake_result(root, "winclip", "mvtec", 0, 0, 0.90)
    fake_result(root, "musc", "mvtec", 0, 0, 0.97, transductive=True)
    fake_result(root, "clip", "mvtec", 0, 0, 0.70)
    out = tmp_path / "reports"
    tables.make_tables([root], out, plots=False)
    rows = list(csv.DictReader((out / "mvtec_summary.csv").open()))
    # Inductive rows first, the transductive block after them, whatever the metric values.
    assert [(r["method"], r["transductive"]) for r in rows] == [
        ("clip", "False"),
        ("winclip", "False"),
        ("musc", "True"),
    ]
    markdown = (out / "mvtec_summary.md").read_text()
    assert "| musc | vit_b16_plus_240 / winclip | 0 (transductive) |" in markdown
    assert "| winclip | vit_b16_plus_240 / winclip | 0 |" in markdown
    assert tables.TRANSDUCTIVE_NOTE in markdown
    assert "0 (transductive)" in (out / "mvtec_per_category.md").read_text()
    assert "0 (transductive)" in (out / "mvtec_efficiency.md").read_text()
    # MuSc's published numbers are found and flagged as transductive.
    entries = tables.load_published()
    assert tables.published_value(entries, "musc", "mvtec", 0, "image_auroc")[0] == 97.8
    assert tables.published_value(entries, "musc", "visa", 0, "pixel_aupro")[0] == 92.7
    assert all(e.get("transductive") for e in entries if e["method"] == "musc")


def test_cli_names_every_folder_it_read_and_its_results(sweep: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    fake_result(other, "clip", "mvtec", 0, 0, 0.7)
    assert tables.main(["--results", str(sweep), str(other), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    # the sweep holds 6 complete results and one unfinished job
    assert f"{sweep}: 6 results (1 incomplete or unreadable, skipped)" in out
    assert f"{other}: 1 result\n" in out
