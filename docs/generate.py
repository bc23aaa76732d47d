"""MkDocs hook: the tables that could drift are generated from the code at build time.

* ``reference/config-groups.md`` -- every Hydra config group and its options (file names are the
  override values), described by each file's first comment line;
* ``reference/methods.md`` -- every method and its capabilities, from the method catalog;
* ``reference/datasets.md`` -- every ``conf/data/*.yaml`` and the reader class it builds;
* ``contributing/layers.md`` -- the layer table, read from the layering test's own ``LAYERS``.

Nothing is written to disk: the pages are added to the build as generated files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
#: Groups that are run settings rather than choices a user makes per experiment.
INTERNAL_GROUPS = ("hydra",)


def on_files(files, config):
    pages = {
        "reference/config-groups.md": config_groups_page(),
        "reference/methods.md": methods_page(),
        "reference/datasets.md": datasets_page(),
        "contributing/layers.md": layers_page(),
    }
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


# ----- reading the conf tree ----------------------------------------------------------------------------
def first_comment(path: Path) -> str:
    """The first comment sentence of a config file (its description), ``@package`` lines skipped."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            if lines or (line and not line.startswith("defaults")):
                break
            continue
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text and lines:
            break
        lines.append(text)
    # Escaped: table cells, and brackets that Markdown would read as links ("[X x 12] object.").
    return " ".join(lines).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def target_of(path: Path) -> str | None:
    """The ``_target_`` a config file builds."""
    node = yaml.safe_load(path.read_text()) or {}
    return node.get("_target_") if isinstance(node, dict) else None


def config_groups_page() -> str:
    rows = ["| group | option (`group=option`) | what it is |", "|---|---|---|"]
    for group in sorted(path for path in CONF.iterdir() if path.is_dir()):
        if group.name in INTERNAL_GROUPS:
            continue
        for option in sorted(group.glob("*.yaml")):
            rows.append(f"| `{group.name}` | `{option.stem}` | {first_comment(option) or '—'} |")
    top = ", ".join(f"`{path.name}`" for path in sorted(CONF.glob("*.yaml")))
    return (
        "# Config groups\n\n"
        "Generated from `conf/` at build time. A group's file name is the value you type: "
        "`python train.py backbone=vit_l14_336 method=aprillab`. Top-level configs: "
        f"{top}.\n\n" + "\n".join(rows) + "\n"
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "—"


def methods_page() -> str:
    from anomaly_vlm.methods.catalog import method_info, method_names

    header = (
        "| method | zero-shot | few-shot | trains on auxiliary data | transductive | ONNX export | backbone "
        "| paper |"
    )
    rows = [header, "|---|---|---|---|---|---|---|---|"]
    for name in method_names():
        info = method_info(name)
        page = f"[`{name}`](../methods/{name}.md)"
        rows.append(
            f"| {page} | {_yes(info.zero_shot)} | {_yes(info.few_shot)} | {_yes(info.trains)} | "
            f"{_yes(info.transductive)} | {_yes(info.exportable)} | `{info.backbone}` ({info.patch_size} px "
            f"patches) | {info.paper.replace('|', '/') or '—'} |"
        )
    return (
        "# Methods and their capabilities\n\n"
        "Generated at build time from the method catalog (`anomaly_vlm/methods/catalog.py`), which reads "
        "each `conf/method/*.yaml`, the capabilities its class declares and its torch model. The backbone "
        "is that of the published setting.\n\n" + "\n".join(rows) + "\n"
    )


def datasets_page() -> str:
    rows = ["| `data=` | reader | what it is |", "|---|---|---|"]
    for path in sorted((CONF / "data").glob("*.yaml")):
        target = target_of(path)
        reader = f"`{target.rpartition('.')[2]}`" if target else "(inherits)"
        rows.append(f"| `{path.stem}` | {reader} | {first_comment(path) or '—'} |")
    return (
        "# Datasets\n\n"
        "Generated at build time from `conf/data/*.yaml`. Every `data=` option is also a `train_data=` "
        "option where it has masks (see [Datasets](../datasets.md)).\n\n" + "\n".join(rows) + "\n"
    )


def layers_page() -> str:
    spec = importlib.util.spec_from_file_location("layering", ROOT / "tests/unit/test_layering.py")
    layering = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layering)
    by_layer: dict[int, list[str]] = {}
    for area, layer in layering.LAYERS.items():
        by_layer.setdefault(layer, []).append(f"`{area}`")
    rows = ["| layer | areas |", "|---|---|"]
    rows += [f"| {layer} | {', '.join(sorted(areas))} |" for layer, areas in sorted(by_layer.items())]
    return (
        "# Layers\n\n"
        "Generated from `LAYERS` in `tests/unit/test_layering.py`, the test that enforces it: a module "
        "imports its own area and lower layers only, and the import graph has no circle.\n\n"
        + "\n".join(rows)
        + "\n"
    )
