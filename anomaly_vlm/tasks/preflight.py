"""Check that a sweep can run before launching it: config, datasets, weights (``make reproduce-*``).

``python -m anomaly_vlm.tasks.preflight experiment=winclip_mvtec [more overrides]`` composes the train
config with the given overrides and checks, in seconds and without building a model, that

* the config composes (e.g. the experiment file exists in ``conf/experiment``) and passes the checks
  every run makes before it builds anything (:func:`~anomaly_vlm.tasks.config_checks.check_config`);
* the evaluated dataset (``data``) and the auxiliary training dataset (``train_data``, if any; for a
  method that trains without one, the published protocol's partner of ``data``) are where the config
  says, with their categories -- for a sweep, every dataset it would read: swept ``data``/``train_data``
  values on the command line and in the config's ``hydra.sweeper.params`` (a suite such as
  ``experiment=anomalyclip_zeroshot_suite``), so no job starts before all are found;
* the backbone's pretrained weights are a local file, in the cache, or downloadable;
* a benchmark dataset (MVTec AD, VisA) used with all its categories (``categories: null``) really
  holds all of them: the published means a reproduction is compared with cover every category.

It exits 0 when all is well and 2 with the first problem otherwise, so a reproduction without
``DATA_ROOT`` or weights stops at once with the dataset's or the weights' own message.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


#: Config groups whose value decides which dataset folders a job reads.
DATASET_GROUPS = ("data", "train_data")


def compose(overrides: list[str], config_name: str = "train", return_hydra_config: bool = False):
    """The composed job config (Hydra runtime fields are not available outside a Hydra run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import anomaly_vlm.config  # noqa: F401  (the typed schema; the hydra config interpolates our resolvers)

    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"config folder not found: {CONF_DIR} (run from a checkout of the project)")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def dataset_variants(overrides: list[str]) -> list[list[str]]:
    """One override list per combination of datasets the (possibly swept) command would read.

    Sweeps of ``data``/``train_data`` come from the command line or, when the command does not sweep
    them, from the config's ``hydra.sweeper.params``; any other swept key is pinned to its first value
    (it does not change which files are read).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed: list[str] = []
    swept: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        values = [str(value) for value in override.sweep_string_iterator()]
        if key in DATASET_GROUPS:
            swept[key] = values
        else:
            fixed.append(f"{key}={values[0]}")
    params = compose(fixed, return_hydra_config=True).hydra.sweeper.get("params") or {}
    for key in DATASET_GROUPS:
        if key not in swept and params.get(key) is not None:
            swept[key] = [value.strip() for value in str(params[key]).split(",") if value.strip()]
    combinations = itertools.product(
        *([f"{key}={value}" for value in values] for key, values in swept.items())
    )
    return [fixed + list(combination) for combination in combinations]


def check_complete(key: str, source, categories: list[str]) -> None:
    """Refuse a benchmark dataset root that holds only some of its categories (when all are asked for)."""
    from anomaly_vlm.data import DataError
    from anomaly_vlm.reporting.tables import full_categories

    full = full_categories(getattr(source, "name", ""))
    missing = [category for category in full or () if category not in categories]
    if missing:
        root = getattr(source, "root", "")
        raise DataError(
            f"{key}: {source.name} root {root} holds {len(full) - len(missing)} of its {len(full)} "
            f"categories (missing: {missing}); the published means cover all {len(full)}. Add the "
            f"missing categories, or run a subset knowingly with {key}.categories=[...] (tables then "
            "mark the row partial, without Δ)"
        )


def check(overrides: list[str]) -> list[str]:
    """Run every check; returns human-readable lines describing what was found.

    Raises:
        hydra.errors.HydraException: the config does not compose.
        anomaly_vlm.data.image_io.DataError: a dataset is missing or malformed.
        anomaly_vlm.backbones.weights.WeightsNotFoundError: weights are missing and cannot be downloaded.
    """
    from omegaconf import OmegaConf

    from anomaly_vlm.backbones.weights import resolve_weights
    from anomaly_vlm.tasks.config_checks import check_config, raise_first
    from anomaly_vlm.tasks.construction import NAMED_GROUPS
    from anomaly_vlm.tasks.instantiate import build
    from anomaly_vlm.tasks.training_data import split_synthesis, use_protocol_training_data
    from anomaly_vlm.wording import counted

    found = []
    checked: set[str] = set()
    for variant in dataset_variants(overrides):
        cfg = compose(variant, return_hydra_config=True)
        choices = cfg.hydra.runtime.choices
        OmegaConf.set_struct(cfg, False)
        # A trainable method without train_data trains on the published partner of its test data.
        names = {group: choices.get(group) for group in NAMED_GROUPS}
        use_protocol_training_data(cfg, names, fit=True)
        raise_first(check_config(cfg, names, fit=True))
        # paths.output_dir points at Hydra's runtime folder, which a preflight does not have.
        cfg.paths.output_dir = str(Path(str(cfg.paths.output_root)) / "preflight")
        for key in DATASET_GROUPS:
            if not cfg.get(key):
                continue
            node = OmegaConf.to_container(cfg[key], resolve=True)
            identity = repr(sorted(node.items()))
            if identity in checked:
                continue
            checked.add(identity)
            node, synthesis = split_synthesis(cfg[key]) if key == "train_data" else (cfg[key], None)
            if synthesis is not None:
                build(synthesis)  # its options and texture files are checked here too
            source = build(node)
            categories = source.categories
            if cfg[key].get("categories") is None:
                check_complete(key, source, categories)
            with_categories = counted(len(categories), "category", "categories")
            found.append(f"{key}: {getattr(source, 'name', key)} with {with_categories}")
    weights = resolve_weights(
        str(cfg.backbone.model), cfg.backbone.get("pretrained"), cfg.backbone.get("cache_dir")
    )
    found.append(f"backbone: {cfg.backbone.model} weights {weights or 'random init (pretrained: null)'}")
    return found


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        lines = check(overrides)
    except Exception as error:  # noqa: BLE001 — every failure is reported as one clear line
        from hydra.errors import MissingConfigException

        message = str(error)
        if isinstance(error, MissingConfigException):
            message += (
                "\n(the experiment or group value is not in conf/ of this checkout; `ls conf/experiment` "
                "lists the available experiments)"
            )
        print(
            f"preflight failed for {' '.join(overrides)}:\n{type(error).__name__}: {message}", file=sys.stderr
        )
        return 2
    print("preflight ok: " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
