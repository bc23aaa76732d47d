"""What the tables and plots are made of: groups of runs of one configuration, published numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


# ----- published numbers --------------------------------------------------------------------------------
def load_published(path: str | Path | None = None) -> list[dict]:
    """The published entries (``anomaly_vlm/reporting/published.json`` unless ``path`` is given)."""
    if path is None:
        text = resources.files("anomaly_vlm.reporting").joinpath("published.json").read_text()
    else:
        text = Path(path).read_text()
    return json.loads(text)["entries"]


def published_value(
    entries: list[dict], method: str, dataset: str, shots: int, metric: str
) -> tuple[float | None, str | None]:
    """``(percent, source)`` of a published cell, or ``(None, None)`` when the paper has none."""
    for entry in entries:
        if entry["method"] == method and entry["dataset"] == dataset and int(entry["shots"]) == int(shots):
            value = entry["metrics"].get(metric)
            if value is not None:
                return float(value), entry["source"]
    return None, None


#: How tables name rows that tested the authors' released weights (``checkpoint_origin: official``).
AUTHORS_WEIGHTS = "authors' weights"
#: How the three-way comparison names the parameters this project trained.
TRAINED_HERE = "trained here"

#: The prompt set shown for a method that reads none (``"uses_prompts": false`` in results.json, e.g. MuSc).
NO_PROMPTS = "—"


# ----- groups of runs --------------------------------------------------------------------------------------
@dataclass
class Group:
    """All seeds of one configuration (dataset, method, backbone, prompts, shots, training data)."""

    dataset: str
    method: str
    backbone: str
    prompts: str
    shots: int
    train_dataset: str | None
    untrained: bool = False
    aupro: str = "exact"  # which AUPRO the runs computed (metrics.aupro); never averaged across variants
    #: "official": the runs tested the authors' released weights (``ckpt_path=<their file>``), shown as
    #: "authors' weights"; None: parameters trained by this project (or none).
    checkpoint_origin: str | None = None
    variant: str = ""
    runs: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.method_label} | {self.backbone} | {self.prompts}"

    @property
    def method_label(self) -> str:
        """The method, with its auxiliary training data when it has one (cross-dataset protocol), marked
        untrained when a trainable method ran without trained parameters, with a non-exact AUPRO, and
        with the config values that set it apart from other rows of the same method (``variant``)."""
        label = self.method
        if self.authors_weights:
            label += f" ({AUTHORS_WEIGHTS})"
        elif self.untrained:
            label += " (untrained)"
        elif self.train_dataset:
            label += f" (trained on {self.train_dataset})"
        if self.aupro != "exact":
            label += f" [AUPRO: {self.aupro}]"
        return f"{label} [{self.variant}]" if self.variant else label

    @property
    def authors_weights(self) -> bool:
        """Whether the runs tested the authors' released weights rather than parameters trained here."""
        return self.checkpoint_origin == "official"

    @property
    def seeds(self) -> list[tuple[int, int | None]]:
        """The replicates: (seed, reference_seed) pairs (few-shot draws vary reference_seed)."""
        return sorted({replicate_of(run) for run in self.runs}, key=lambda pair: (pair[0], pair[1] or 0))

    @property
    def transductive(self) -> bool:
        """Whether the runs scored each test image against the other test images (e.g. MuSc)."""
        return any(bool(run.get("transductive")) for run in self.runs)

    @property
    def shots_label(self) -> str:
        """The shots cell; transductive rows say so, so they are never read as inductive zero-shot."""
        return f"{self.shots} (transductive)" if self.transductive else str(self.shots)

    def metric_values(self, metric: str, category: str | None = None) -> list[float]:
        values = []
        for run in self.runs:
            block = (
                run["metrics"]["mean"] if category is None else run["metrics"]["per_category"].get(category)
            )
            value = (block or {}).get(metric)
            if value is not None:
                values.append(100.0 * float(value))
        return values

    def efficiency_values(self, key: str) -> list[float]:
        return [
            float(run["efficiency"][key])
            for run in self.runs
            if (run.get("efficiency") or {}).get(key) is not None
        ]

    @property
    def categories(self) -> list[str]:
        seen: dict[str, None] = {}
        for run in self.runs:
            seen.update(dict.fromkeys(run["metrics"]["per_category"]))
        return list(seen)


def replicate_of(run: dict) -> tuple[int, int | None]:
    """Which replicate a run is: its seed and, for few-shot runs, the seed of its reference draw."""
    return int(run.get("seed") or 0), run.get("reference_seed")
