"""anomaly-vlm: vision-language (CLIP) anomaly classification and segmentation experiments.

``import anomaly_vlm`` stays light (no torch, no Hydra): :data:`Detector` and :func:`compose` import what
they need when used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

__version__ = "0.1.0"

#: The Hydra config tree of a checkout (``conf/`` beside the package).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(
    overrides: Sequence[str] = (),
    config_name: str = "train",
    config_dir: str | Path | None = None,
) -> DictConfig:
    """The run config that ``python train.py <overrides>`` (or ``evaluate.py``) would compose.

    Registers the typed schema and the resolvers first (what the entry points do on import), so a
    plain ``hydra.compose`` needs ``import anomaly_vlm.config`` before it; Hydra's own state, if a
    caller initialised it, is restored afterwards. Hydra's runtime fields (``hydra.*``) are not set.

    Args:
        overrides: command-line overrides, e.g. ``["method=aprillab", "shots=4", "backbone=tiny"]``.
        config_name: ``train`` or ``evaluate``.
        config_dir: the config tree (default: ``conf/`` of this checkout, :data:`CONF_DIR`).

    Returns:
        The composed ``DictConfig`` (interpolations unresolved, as the tasks receive it).

    Raises:
        FileNotFoundError: no config tree at ``config_dir``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import anomaly_vlm.config  # noqa: F401  (registers the schema and the resolvers)

    folder = Path(config_dir if config_dir is not None else CONF_DIR).expanduser().resolve()
    if not (folder / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(
            f"no {config_name}.yaml in {folder}: pass config_dir=<the conf folder of an anomaly-vlm checkout>"
        )
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def __getattr__(name: str):
    # Lazy: ``anomaly_vlm.Detector`` pulls in torch on first use.
    if name == "Detector":
        from anomaly_vlm.deploy import Detector

        return Detector
    raise AttributeError(f"module 'anomaly_vlm' has no attribute {name!r}")
