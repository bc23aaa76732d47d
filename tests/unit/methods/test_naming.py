"""One name per method: config file, ``method=`` value, package folder and ``method_name`` agree."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[3]
METHOD_FILES = sorted((ROOT / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda path: path.stem)
def test_config_folder_and_method_name_are_one_word(path: Path) -> None:
    target = OmegaConf.load(path).method._target_
    module_path, _, class_name = target.rpartition(".")
    assert module_path == f"anomaly_vlm.methods.{path.stem}", f"{path.name}: _target_ {target}"
    assert getattr(importlib.import_module(module_path), class_name).method_name == path.stem


def test_no_third_spelling_of_april_gan_in_code_identifiers() -> None:
    # Strings (config values such as the prompt set ``aprilgan``) are user-facing and not checked.
    # Classes are spelled AprilGAN<Role> (AprilGAN, AprilGANModule, AprilGANRelease, ...).
    def allowed(name: str) -> bool:
        suffix = name.removeprefix("AprilGAN")
        return name == "aprillab" or (suffix != name and (suffix == "" or suffix[0].isupper()))

    found = set()
    for path in (ROOT / "anomaly_vlm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.alias):
                names = [part for part in node.name.split(".")] + ([node.asname] if node.asname else [])
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = node.module.split(".")
            found |= {
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if "april" in name.lower() and not allowed(name)
            }
    assert not found, "spell APRIL-GAN as the package aprillab or the classes AprilGAN*:\n" + "\n".join(found)
