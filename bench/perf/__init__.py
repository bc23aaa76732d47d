"""Time and memory benchmarks: ``python -m bench.perf <benchmark> [--json out.json]``.

Each ``bench/perf/<benchmark>.py`` prints its figures as it goes and fills a
:class:`bench.report.BenchReport`, which ``--json`` writes for the documentation to cite.
"""

#: benchmark -> what it measures (shown by ``python -m bench.perf --help``).
BENCHMARKS = {
    "cache": "feature cache: a 12-job WinCLIP sweep and APRIL-GAN ViT-L training, with vs without",
    "export": "exported detectors: onnxruntime vs PyTorch per-image time and max |delta|",
    "knn": "AnomalyDINO's nearest-neighbour search: faiss-cpu vs torch matrix products at MVTec scale",
    "metrics": "the exact metrics at MVTec scale (time, memory), and against anomalib-style AUPRO",
    "official": "ours vs the official code (5 methods) and anomalib's WinCLIP: time, peak memory, fp32/bf16",
    "precision": "every method in fp32 and each low precision: time, maps and AUROC against fp32",
    "musc-memory": "MuSc whole-category scoring: peak memory and time against the number of images",
    "promptad": "PromptAD per-category training and scoring time on the published architecture",
    "serve": "inspection service under load: throughput, p50/p95/p99 vs clients, batching on/off, soak",
    "winclip": "WinCLIP forward time against anomalib's (side env of `make parity-venv`)",
}
