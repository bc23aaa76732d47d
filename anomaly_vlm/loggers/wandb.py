"""Weights & Biases: run naming and grouping, an offline fallback, and what a finished job logs.

* run name = the job's override string (``method=winclip,shots=4``), group = the sweep folder (one group
  per multirun), tags and config fields ``method``, ``backbone``, ``prompts``, ``shots``, ``seed``,
  ``dataset`` so dashboards can pivot on them;
* offline by default (``logger.offline=true``: runs land in ``<run>/wandb``, ``wandb sync`` uploads them);
  with ``logger.offline=false`` a W&B server that cannot be reached (no network, no API key) makes the
  job continue offline and say so — it never stops a job;
* logged at the end: mean and per-category metrics, a per-category ``wandb.Table``, efficiency figures,
  a few heatmap panels (image | map | ground truth); training curves come from the method's
  ``self.log`` calls during fit;
* :func:`finish` closes the run, so every job of a multirun is its own run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from anomaly_vlm import compat
from anomaly_vlm.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

PIVOT_FIELDS = ("method", "backbone", "prompts", "shots", "seed", "dataset")


class WandbRunLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that falls back to offline mode instead of failing.

    Args:
        project: W&B project.
        save_dir: folder of the run files (``<run>/wandb``).
        offline: write locally only (the default); ``false`` tries the server first.
        name, group, tags: run name, group and tags (filled by the task from the job's overrides).
        init_timeout: seconds to wait for the server before falling back to offline.
        heatmaps_per_category: heatmap panels logged per category.
        **kwargs: passed to ``WandbLogger`` / ``wandb.init`` (``entity``, ``job_type``, ...).
    """

    def __init__(
        self,
        project: str = "anomaly-vlm",
        save_dir: str = ".",
        offline: bool = True,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        init_timeout: float = 30.0,
        heatmaps_per_category: int = 2,
        **kwargs: Any,
    ) -> None:
        import wandb

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.heatmaps_per_category = int(heatmaps_per_category)
        self.offline = bool(offline)
        self._init_timeout = float(init_timeout)
        super().__init__(
            project=project,
            save_dir=save_dir,
            offline=offline,
            name=name,
            group=group,
            tags=list(tags or []),
            settings=wandb.Settings(init_timeout=self._init_timeout, silent=True),
            **kwargs,
        )
        compat.wandb_logger_drop_unset_anonymous(self)

    @property
    def experiment(self):  # type: ignore[override]
        try:
            return super().experiment
        except Exception as error:  # noqa: BLE001 — any failure to reach W&B must not stop the job
            if self.offline or compat.wandb_run_started(self):
                raise
            log.warning("W&B could not be reached (%s); continuing offline in %s", error, self.save_dir)
            compat.wandb_logger_go_offline(self)
            self.offline = True
            os.environ["WANDB_MODE"] = "offline"
            return super().experiment


def is_wandb_config(node: DictConfig) -> bool:
    """Whether a logger config builds a :class:`WandbRunLogger`."""
    target = node.get("_target_")
    try:
        return bool(target) and issubclass(get_class(str(target)), WandbRunLogger)
    except (ImportError, ValueError):
        return False


def run_fields(cfg: DictConfig, names: dict[str, str | None]) -> dict[str, Any]:
    """``name``, ``group`` and ``tags`` of a job's W&B run."""
    from hydra.core.hydra_config import HydraConfig

    from anomaly_vlm.runtime import in_multirun

    name, group = None, None
    if HydraConfig.initialized():
        name = HydraConfig.get().job.override_dirname or "defaults"
        if in_multirun():
            group = Path(cfg.paths.output_dir).parent.name
    fields = pivot_fields(cfg, names)
    tags = [f"{key}:{value}" for key, value in fields.items() if value is not None]
    return {"name": name or cfg.get("task_name"), "group": group, "tags": tags}


def pivot_fields(cfg: DictConfig, names: dict[str, str | None]) -> dict[str, Any]:
    """The fields dashboards pivot on."""
    return {
        "method": names.get("method"),
        "backbone": names.get("backbone"),
        "prompts": names.get("prompts"),
        "shots": int(cfg.shots),
        "seed": int(cfg.seed),
        "dataset": names.get("data"),
        "transductive": is_transductive(cfg),
    }


def is_transductive(cfg: DictConfig) -> bool:
    """Whether the configured method scores test images against each other (a separate protocol)."""
    target = (cfg.get("method") or {}).get("_target_")
    if not target:
        return False
    # ``is True``: the base class defines ``transductive`` as a property, truthy on the class itself.
    return getattr(get_class(target), "transductive", False) is True


def heatmaps_wanted(logger: Any) -> int:
    """Overlays per category the evaluation callback must write for the W&B heatmap panels."""
    return logger.heatmaps_per_category if isinstance(logger, WandbRunLogger) else 0


def log_results(
    logger: Any,
    per_category: dict[str, dict[str, float | None]],
    mean: dict[str, float | None],
    efficiency: dict[str, Any],
    output_dir: Path,
) -> None:
    """Per-category table, run summary and heatmap panels of a finished job (W&B loggers only)."""
    if not isinstance(logger, WandbRunLogger):
        return
    import wandb

    run = logger.experiment
    columns = ["category", *METRIC_NAMES]
    rows = [
        [category, *(metrics.get(name) for name in METRIC_NAMES)]
        for category, metrics in per_category.items()
    ]
    rows.append(["mean", *(mean.get(name) for name in METRIC_NAMES)])
    run.log({"test/per_category": wandb.Table(columns=columns, data=rows)})
    for name, value in mean.items():
        if value is not None:
            run.summary[f"test/{name}"] = value
    for key, value in efficiency.items():
        if isinstance(value, int | float):
            run.summary[f"efficiency/{key}"] = value
    panels = {}
    for category in per_category:
        files = sorted((Path(output_dir) / "overlays" / category).glob("*.png"))[
            : logger.heatmaps_per_category
        ]
        if files:
            panels[f"heatmaps/{category}"] = [
                wandb.Image(str(path), caption=f"{path.stem}: image | map | ground truth") for path in files
            ]
    if panels:
        run.log(panels)


def finish(logger: Any) -> None:
    """Close the W&B run of a job, so every job of a multirun is its own run."""
    if isinstance(logger, WandbLogger) and compat.wandb_run_started(logger):
        import wandb

        wandb.finish()
