"""Every method states the precision its official release ran in: what ``backbone.precision=auto`` picks
on a GPU. A method missing from the table would silently get mixed fp16 there."""

from anomaly_vlm.backbones.precision import (
    MIXED_PRECISIONS,
    PURE_PRECISIONS,
    RELEASE_GPU_PRECISION,
    resolve_precision,
)
from anomaly_vlm.methods.catalog import method_names


def test_every_method_states_its_release_precision():
    missing = sorted(set(method_names()) - set(RELEASE_GPU_PRECISION))
    assert not missing, f"RELEASE_GPU_PRECISION lacks {missing}"
    for method, precision in RELEASE_GPU_PRECISION.items():
        assert precision in MIXED_PRECISIONS or precision in PURE_PRECISIONS, (method, precision)


def test_auto_on_a_gpu_picks_the_release_precision_of_the_2025_methods():
    for method in ("anomalydino", "aaclip", "bayespfl", "faprompt"):
        resolved, reason = resolve_precision("auto", "cuda", RELEASE_GPU_PRECISION[method])
        assert resolved == "fp32", (method, reason)
    assert resolve_precision("auto", "cuda", RELEASE_GPU_PRECISION["anomalyclip"])[0] == "fp16"
