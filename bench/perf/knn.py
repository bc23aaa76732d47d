"""AnomalyDINO's nearest-neighbour search: faiss-cpu (the official library) against torch matrix products.

``python -m bench.perf knn`` (MVTec scale: ViT-S/14 at 448 px, 1024 patches per image, width 384; a memory
of k shots x 8 rotations x 1024 patches for k = 1, 2, 4, 8, 16, queried by one category's worth of test
images) or ``--quick`` (small sizes, to check that it runs).

Per memory size it prints the time per test image of ``faiss.IndexFlatL2`` on L2-normalised vectors (as
the official code, distances halved; the search ``method.knn=faiss``, the default, runs) and of
:func:`~anomaly_vlm.methods.anomalydino.nearest_distances` with ``knn="torch"`` (``method.knn=torch``), with
the index build counted once per category, and the largest difference of the distances (the two must give
the same nearest neighbour: the check fails above 1e-5). Timings are only comparable on an idle machine;
``--threads`` sets both libraries' thread count.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.report import BenchReport

TOLERANCE = 1e-5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shots", default="1,2,4,8,16", help="memory sizes in shots (x 8 rotations)")
    parser.add_argument("--patches", type=int, default=1024, help="patches per image (448 px: 1024)")
    parser.add_argument("--width", type=int, default=384, help="feature width (ViT-S/14: 384)")
    parser.add_argument("--queries", type=int, default=100, help="test images per category")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: their default)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")


def _best(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def run(args: argparse.Namespace, report: BenchReport) -> int:
    try:
        import faiss
    except ImportError:
        print("error: faiss is not installed (faiss-cpu is a dependency of the package: pip install -e .)")
        return 2
    from anomaly_vlm.methods.anomalydino import nearest_distances

    if args.quick:
        args.shots, args.patches, args.width, args.queries, args.repeats = "1,2", 64, 32, 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries * args.patches, args.width, generator=generator)
    rows = report.results.setdefault("memories", [])
    status = 0
    print(f"{'shots':>5} {'memory':>8} {'faiss ms/img':>13} {'torch ms/img':>13} {'max |d|':>9}")
    for shots in (int(value) for value in args.shots.split(",")):
        memory = torch.randn(shots * 8 * args.patches, args.width, generator=generator)

        def with_faiss(memory=memory):
            reference = F.normalize(memory, dim=-1).numpy().copy()
            index = faiss.IndexFlatL2(reference.shape[1])
            index.add(reference)
            query = F.normalize(queries, dim=-1).numpy().copy()
            distances, _ = index.search(query, 1)
            return torch.from_numpy(distances[:, 0] / 2)

        def with_torch(memory=memory):
            return nearest_distances(queries, memory, knn="torch")

        faiss_s, theirs = _best(with_faiss, args.repeats)
        torch_s, ours = _best(with_torch, args.repeats)
        delta = float((ours - theirs).abs().max())
        status |= int(delta > TOLERANCE)
        row = {
            "shots": shots,
            "memory_patches": int(memory.shape[0]),
            "faiss_ms_per_image": round(1000 * faiss_s / args.queries, 3),
            "torch_ms_per_image": round(1000 * torch_s / args.queries, 3),
            "max_abs_delta": delta,
        }
        rows.append(row)
        print(
            f"{shots:5d} {row['memory_patches']:8d} {row['faiss_ms_per_image']:13.3f} "
            f"{row['torch_ms_per_image']:13.3f} {delta:9.1e}"
        )
    report.results["threads"] = {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
    if status:
        print(f"FAIL: the distances differ by more than {TOLERANCE:g}")
    return status
