"""Parity harnesses against the official code and performance benchmarks.

Run from the repository root (the package ``anomaly_vlm`` installed, ``bench`` importable from there):

* ``python -m bench.parity <method> --official DIR [--json out.json]``: our method against its official
  code (``bench/parity/<method>.py``), a :class:`bench.report.ParityReport` printed and optionally saved;
* ``python -m bench.perf <benchmark> [--json out.json]``: time and memory figures
  (``bench/perf/<benchmark>.py``), a :class:`bench.report.BenchReport`.

``make parity-<method>`` and ``make bench-<benchmark>`` call these commands.
"""

from pathlib import Path

#: The repository root: the harnesses read the project's Hydra configs from ``conf/`` there.
REPO_ROOT = Path(__file__).resolve().parents[1]
