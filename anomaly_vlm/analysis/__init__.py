"""The paper's analyses: layers, shots, resolution, efficiency, prompts, cross-domain, and one HTML report.

Each analysis runs its sweeps through ``train.py -m`` (resumable, any Hydra launcher), reads every
``results.json`` they wrote and draws tables and figures that name every varying dimension and trace
every number to its ``results.json`` (:mod:`anomaly_vlm.analysis.run`, ``make analysis-*``).
"""

from anomaly_vlm.analysis.analyses import ANALYSES, Analysis, Section
from anomaly_vlm.analysis.records import Record, load_records
from anomaly_vlm.analysis.run import run_analyses

__all__ = ["ANALYSES", "Analysis", "Record", "Section", "load_records", "run_analyses"]
