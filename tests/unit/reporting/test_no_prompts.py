"""A method that reads no prompt set (MuSc) shows none in the tables, and its prompts never split rows."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from anomaly_vlm.analysis.records import load_records
from anomaly_vlm.methods.clip import CLIPBaselineModule
from anomaly_vlm.methods.musc import MuScModule
from anomaly_vlm.reporting import tables

_spec = importlib.util.spec_from_file_location("tables_helpers", Path(__file__).with_name("test_tables.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def test_musc_declares_that_it_reads_no_prompts() -> None:
    assert MuScModule.uses_prompts is False
    assert getattr(CLIPBaselineModule, "uses_prompts", True) is True


def _musc(folder: Path, seed: int, prompt_set: str) -> Path:
    # As the runner writes it: the prompt set composed into the config, and the method's declaration.
    path = _helpers.fake_result(
        folder, "musc", "mvtec", 0, seed, 0.9, transductive=True, uses_prompts=False, prompts=prompt_set
    )
    payload = json.loads(path.read_text())
    payload["config"] = {"prompts": {"name": prompt_set}, "method": {"layers": None}}
    path.write_text(json.dumps(payload))
    return path


def test_tables_show_no_prompt_set_for_musc(tmp_path: Path) -> None:
    _musc(tmp_path / "runs" / "a", 0, "two_prompt")
    _musc(tmp_path / "runs" / "b", 1, "winclip_cpe")  # a prompt sweep changes nothing for MuSc
    _helpers.fake_result(tmp_path / "runs" / "w", "winclip", "mvtec", 0, 0, 0.8)
    out = tmp_path / "reports"
    tables.make_tables([tmp_path / "runs"], out, plots=False)
    markdown = (out / "mvtec_summary.md").read_text()
    assert "| musc | vit_b16_plus_240 / — | 0 (transductive) |" in markdown
    assert "| winclip | vit_b16_plus_240 / winclip | 0 |" in markdown
    rows = {row["method"]: row for row in csv.DictReader((out / "mvtec_summary.csv").open())}
    assert rows["musc"]["prompts"] == "" and rows["musc"]["seeds"] == "2"
    assert rows["winclip"]["prompts"] == "winclip"
    per_category = (out / "mvtec_per_category.md").read_text()
    assert "## musc | vit_b16_plus_240 | — | shots=0 (transductive)" in per_category


def test_analysis_records_of_musc_have_no_prompt_set(tmp_path: Path) -> None:
    _musc(tmp_path / "a", 0, "two_prompt")
    (record,) = load_records([tmp_path])
    assert record.value("prompts") is None and record.display("prompts") == "—"
    assert not any(key.startswith("prompts.") for key in record.fields())
