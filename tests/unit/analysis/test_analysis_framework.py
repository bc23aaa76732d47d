"""The analysis framework on results.json fixtures: dimensions, tables, figures, provenance, report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from composed import compose_each, first_job

from anomaly_vlm.analysis.analyses import ANALYSES, PUBLISHED_AGGREGATION, PromptsAnalysis, domain_of
from anomaly_vlm.analysis.figures import pareto_front
from anomaly_vlm.analysis.records import complete_dimensions, configurations, load_records
from anomaly_vlm.analysis.run import analysis_records, run_analyses
from anomaly_vlm.analysis.selection import select

CONF = Path(__file__).resolve().parents[3] / "conf"


def _points(figure) -> list[dict]:
    return json.loads(figure.provenance.read_text())["points"]


def test_unnamed_varying_values_are_added_and_determined_ones_are_not(results, tmp_path):
    for stages in ([2], [4]):
        results.write("x", method="aprillab", score=0.6, config={"method.stages": stages})
    results.write("x", method="winclip", score=0.7, config={"backbone.image_size": 96, "data.image_size": 96})
    results.write("x", method="winclip", score=0.7)
    records = load_records([results.root])
    # method.stages varies within aprillab: naming the method alone would merge two configurations
    assert "method.stages" in complete_dimensions(records, ["method"])
    assert "backbone.image_size" in complete_dimensions(records, ["method", "method.stages"])
    # data.image_size follows backbone.image_size, method._target_ follows method: never added
    added = complete_dimensions(records, ["method", "method.stages", "backbone.image_size"])
    assert added == []


def test_replicates_form_one_configuration_with_all_their_files(results):
    paths = [
        results.write("s", method="winclip", score=s, shots=2, reference_seed=r)
        for r, s in enumerate((0.5, 0.6, 0.7))
    ]
    (cell,) = configurations(load_records([results.root])).values()
    assert cell.n == 3 and cell.mean("image_auroc") == pytest.approx(60.0)
    assert cell.std("image_auroc") == pytest.approx(10.0)
    assert {Path(s).resolve() for s in cell.sources} == {p.resolve() for p in paths}


def test_layers_figure_lines_per_method_combination_dashed_and_every_point_traced(results, tmp_path):
    written = {}
    for block, score in ((1, 0.55), (2, 0.65)):
        written[("aprillab", block)] = results.write(
            "layers-aprillab", method="aprillab", score=score, config={"method.stages": [block]}
        )
    written[("aprillab", None)] = results.write(
        "layers-aprillab", method="aprillab", score=0.8, config={"method.stages": None}
    )
    for block, score in ((1, 0.5), (8, 0.9)):
        written[("anomalyclip", block)] = results.write(
            "layers-anomalyclip", method="anomalyclip", score=score, config={"method.layers": [block]}
        )
    out = tmp_path / "reports"
    section = ANALYSES["layers"].render(analysis_records("layers", "tiny", results.root), out, "tiny")
    image = next(f for f in section.figures if f.png.name == "layers_image.png")
    assert image.png.stat().st_size > 1000
    points = [p for p in _points(image) if p["metric"] == "image_auroc"]
    by_series = {}
    for point in points:
        by_series.setdefault(point["series"], []).append(point)
    assert set(by_series) == {"method=aprillab", "method=anomalyclip"}
    line = {p["x"]: p["mean"] for p in by_series["method=aprillab"]}
    assert line[1.0] == pytest.approx(55.0) and line[2.0] == pytest.approx(65.0)
    combination = [p for p in by_series["method=aprillab"] if isinstance(p["x"], str)]
    assert len(combination) == 1 and combination[0]["mean"] == pytest.approx(80.0)
    sources = {Path(s).resolve() for p in points for s in p["sources"]}
    assert sources == {p.resolve() for p in written.values()}
    assert "dataset" not in image.dimensions and "test data=synthetic" in image.title
    table = section.tables[0]
    rows = list(csv.DictReader(table.csv.open()))
    assert len(rows) == 5 and all(row["sources"].endswith("results.json") for row in rows)


def test_shots_figure_marks_published_points_and_spreads_over_draws(results, tmp_path):
    results.write("shots-winclip-zero", method="winclip", score=0.9, dataset="mvtec")
    for r, s in enumerate((0.90, 0.92, 0.94)):
        results.write("shots-winclip", method="winclip", score=s, shots=1, reference_seed=r, dataset="mvtec")
    section = ANALYSES["shots"].render(analysis_records("shots", "tiny", results.root), tmp_path, "tiny")
    points = _points(section.figures[0])
    published = {p["x"]: p["published"] for p in points if "published" in p and p["metric"] == "image_auroc"}
    assert published[0.0] == 91.8 and published[1.0] == 93.1  # WinCLIP, MVTec AD (published.json)
    one_shot = next(p for p in points if p.get("x") == 1.0 and "mean" in p and p["metric"] == "image_auroc")
    assert one_shot["n"] == 3 and one_shot["std"] == pytest.approx(2.0)
    assert "reference draws" in section.figures[0].title


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 70), (5, 60), (20, 65), (40, 90), (5, 50), (30, 90)]
    assert pareto_front(points) == [(5, 60), (10, 70), (30, 90)]


def test_prompt_conditions_put_the_full_set_under_its_aggregation_too(results):
    def write(ablation: str, aggregation: str):
        return results.write(
            "prompts-winclip", method="winclip", score=0.6,
            config={"prompts.ablation": ablation, "method.text_aggregation": aggregation},
        )  # fmt: skip

    full, flipped = write("full", "raw_mean"), write("full", "normalized_mean")
    states, states_flipped = write("states_only", "raw_mean"), write("states_only", "normalized_mean")
    learned = results.write("prompts-anomalyclip", method="anomalyclip", score=0.7)
    by_path = {r.path.resolve(): r for r in load_records([results.root])}

    def conditions(path):
        return PromptsAnalysis.conditions(by_path[path.resolve()])

    assert conditions(full) == ["full ensemble", "raw mean"]  # WinCLIP's published aggregation
    assert conditions(flipped) == ["normalised mean"]
    assert conditions(states) == ["states only"] and conditions(states_flipped) == []
    assert conditions(learned) == ["learned prompts"]


def test_published_aggregations_are_the_method_defaults():
    for method, aggregation in PUBLISHED_AGGREGATION.items():
        spec = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
        assert spec["method"]["text_aggregation"] == aggregation


def test_crossdomain_heatmap_cells_are_train_by_test(results, tmp_path):
    for train, test, score in (("brick", "brick", 0.9), ("brick", "nut", 0.6), ("nut", "brick", 0.4)):
        results.write(
            "crossdomain-aprillab", method="aprillab", score=score, train_dataset="synthetic",
            config={"train_data.categories": [train], "data.categories": [test]},
        )  # fmt: skip
    records = analysis_records("crossdomain", "tiny", results.root)
    assert {(domain_of(r, "train"), domain_of(r, "test")) for r in records} == {
        ("[brick]", "[brick]"), ("[brick]", "[nut]"), ("[nut]", "[brick]"),
    }  # fmt: skip
    section = ANALYSES["crossdomain"].render(records, tmp_path, "tiny")
    cells = {(p["row"], p["column"]): p["mean"] for p in _points(section.figures[0])}
    assert cells == {("[brick]", "[brick]"): 90.0, ("[brick]", "[nut]"): 60.0, ("[nut]", "[brick]"): 40.0}


def test_selection_respects_each_constraint(results):
    uncached = {"feature_cache.enabled": False}
    results.write("shots-winclip-zero", method="winclip", score=0.6, efficiency={"ms_per_image": 5.0},
                  config=uncached)  # fmt: skip
    results.write("shots-aprillab-zero", method="aprillab", score=0.7, train_dataset="synthetic",
                  efficiency={"ms_per_image": 50.0}, config=uncached)  # fmt: skip
    results.write("shots-winclip", method="winclip", score=0.8, shots=2, reference_seed=0,
                  efficiency={"ms_per_image": 8.0}, config=uncached)  # fmt: skip
    # timed with cached features: its latency is the scoring's alone, so it enters no latency budget
    results.write("shots-winclip", method="winclip", score=0.95, shots=1, reference_seed=0,
                  efficiency={"ms_per_image": 1.0})  # fmt: skip
    choices = {(c.constraint, c.metric): c for c in select(load_records([results.root]))}

    def best(constraint: str) -> str:
        return choices[(constraint, "image_auroc")].winner.records[0].value("method"), choices[
            (constraint, "image_auroc")
        ].winner.records[0].value("shots")

    assert best("no training data, no normal image") == ("winclip", 0)
    assert best("auxiliary training data, no normal image") == ("aprillab", 0)
    assert best("≤ 2 normal images, no training data") == ("winclip", 1)
    assert best("≤ 2 normal images, auxiliary training data") == ("winclip", 1)
    assert best("latency ≤ 10 ms/image") == ("winclip", 2)
    assert choices[("latency ≤ 10 ms/image", "image_auroc")].candidates == 2
    assert choices[("latency ≤ 100 ms/image", "image_auroc")].candidates == 3


def test_report_embeds_every_figure_and_lists_every_source(results, tmp_path):
    results.write("shots-winclip-zero", method="winclip", score=0.6, efficiency={"ms_per_image": 5.0})
    results.write("shots-winclip", method="winclip", score=0.8, shots=2, reference_seed=0)
    results.write("layers-musc", method="musc", score=0.7, config={"method.layers": [3]})
    sections, outcomes, report = run_analyses(
        ["layers", "shots"], "tiny", tmp_path / "reports", results.root, run=False, report=True
    )
    assert outcomes == [] and report is not None
    text = report.read_text()
    figures = sum(len(s.figures) for s in sections)
    assert figures >= 3 and len(re.findall(r'<img src="data:image/png;base64,', text)) == figures
    assert 'src="http' not in text and "<script" not in text  # self-contained
    for section in sections:
        for record in section.records:
            assert record.source in text
    assert "Method selection" in text and "no training data, no normal image" in text
    manifest = json.loads((tmp_path / "reports" / "tiny" / "shots" / "manifest.json").read_text())
    assert len(manifest["results"]) == 2


@pytest.mark.parametrize(
    ("scale", "every_swap"),
    [
        ("tiny", False),
        ("published", False),
        # Every method's job of each data swap, not one method's: test-all only (the default cases compose
        # every experiment, and each data swap once).
        pytest.param("published", True, marks=pytest.mark.slow),
    ],
)
def test_every_sweep_composes(scale, every_swap, monkeypatch):
    """The first job of every sweep of every analysis composes (wrong keys or values fail here, not
    after an hour of sweeping)."""
    monkeypatch.setenv("DATA_ROOT", "data")
    jobs, swaps = {}, set()
    for analysis in ANALYSES.values():
        for sweep in analysis.sweeps(scale):
            job = first_job(sweep.overrides)
            groups = [o for o in job if "." not in o.split("=")[0] and (CONF / o.split("=")[0]).is_dir()]
            swap = tuple(o for o in groups if not o.startswith("experiment="))
            if (
                not every_swap
                and len(swap) < len(groups)
                and swap
                and all(o.split("=")[0] in ("data", "train_data") for o in swap)
            ):
                # One sweep builds the same job for each method: a method's experiment with other data
                # (limitations-<method>-types: data=mvtec_loco; crossdomain-<method>: train_data=mvtec
                # data=mvtec). Every experiment composes in the other sweeps, so one method's job stands
                # for the swap; each takes a whole composition (~0.1 s).
                if swap in swaps:
                    continue
                swaps.add(swap)
            jobs.setdefault(sweep.part, job)
    assert len(jobs) >= 15
    # Sweeps share experiments: each distinct set of config-group choices is composed once.
    for part, cfg in zip(jobs, compose_each("train", jobs.values()), strict=True):
        assert cfg.method is not None, part


def test_a_sweep_is_up_to_date_only_when_every_job_has_finished(results):
    from anomaly_vlm.analysis.sweeps import Sweep, is_up_to_date

    path = results.write("x", method="clip", score=0.5)
    # Hydra writes a job's overrides back in its own spelling (false -> False, lists with spaces).
    (path.parent / ".hydra").mkdir()
    (path.parent / ".hydra" / "overrides.yaml").write_text(
        "- feature_cache.enabled=False\n- data.categories=[disc, nut]\n- seed=0\n"
        "- sweep_name=analysis-tiny-x\n- paths.output_root=outputs\n"
    )
    base = ("feature_cache.enabled=false", "data.categories=[disc,nut]")
    assert is_up_to_date(Sweep("x", (*base, "seed=0")), "tiny", results.root)
    assert not is_up_to_date(Sweep("x", (*base, "seed=0,1")), "tiny", results.root)  # a new job
    assert not is_up_to_date(Sweep("x", ("feature_cache.enabled=true", "seed=0")), "tiny", results.root)
    assert not is_up_to_date(Sweep("x", (*base, "seed=0")), "tiny", results.root, ["trainer.max_epochs=2"])


def test_every_method_with_learned_text_gets_a_learned_prompts_bar():
    parts = {sweep.part for sweep in ANALYSES["prompts"].sweeps("tiny")}
    assert {"prompts-anomalyclip", "prompts-faprompt", "prompts-bayespfl"} <= parts
