"""Release files made by the official code itself, for the ``ckpt_path=<the authors' file>`` checks.

Each trained method's harness writes a file in its official release format by running the official
training code's own save statement (or save method) on random weights, loads that file with the
official test code's own load statements, and loads the same file into our method with
``load_trainable_checkpoint``; then both sides score the same images. The statements are taken from the
official checkout at run time (located by their text, compiled from its AST), never copied here.

The official save and load lines sit inline in ``train()`` / ``test()`` functions that also read datasets
from disk, so the functions cannot be called whole: :func:`run_official_statements` runs just those
statements, with the names they use bound to the harness's official objects.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.prompts import PromptSet
from bench import REPO_ROOT
from bench.parity.official import max_abs
from bench.report import ParityReport

#: A refusal row passes when the expected message came (delta 0) and misses otherwise (delta 1).
REFUSED_TARGET = 0.0


def _statement_lists(tree: ast.AST) -> Iterator[list[ast.stmt]]:
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            value = getattr(node, field, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value


def official_statements(source: Path, first: str, count: int = 1) -> types.CodeType:
    """``count`` consecutive statements of ``source``, the first one the statement whose text holds ``first``.

    Raises:
        LookupError: no statement holds ``first`` (the official file changed: the harness says so).
    """
    text = source.read_text()
    tree = ast.parse(text)
    for body in _statement_lists(tree):
        for index, statement in enumerate(body):
            segment = ast.get_source_segment(text, statement) or ""
            # A simple statement, not a block (a function or loop around the wanted line also holds it).
            if first in segment and not hasattr(statement, "body"):
                chosen = body[index : index + count]
                module = ast.Module(body=chosen, type_ignores=[])
                return compile(module, f"{source} (official statements)", "exec")
    raise LookupError(f"no statement containing {first!r} in {source}")


def run_official_statements(source: Path, first: str, namespace: Mapping[str, Any], count: int = 1) -> dict:
    """Run :func:`official_statements` with ``namespace`` as their globals; returns the namespace after."""
    scope = dict(namespace)
    exec(official_statements(source, first, count), scope)  # noqa: S102 - the official code, by design
    return scope


def official_methods(source: Path, class_name: str, names: tuple[str, ...], namespace: Mapping[str, Any]):
    """The methods ``names`` of ``class_name`` in ``source``, compiled from the official file alone (the
    class's constructor needs pretrained weights and data; its save/load methods do not)."""
    tree = ast.parse(source.read_text())
    cls = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == class_name)
    functions = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {function.name for function in functions}
    if missing:
        raise LookupError(f"{class_name} in {source} has no {sorted(missing)}")
    scope = dict(namespace)
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(source), "exec"), scope)  # noqa: S102
    return {name: scope[name] for name in names}


def official_constructor_literal(source: Path, class_name: str, attribute: str) -> Any:
    """The literal value ``self.<attribute> = <literal>`` in ``class_name.__init__`` of ``source``."""
    tree = ast.parse(source.read_text())
    cls = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == class_name)
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == attribute:
                    return ast.literal_eval(node.value)
    raise LookupError(f"{class_name}.__init__ in {source} sets no literal {attribute}")


def with_one_wrong_shape(path: Path, out: Path) -> tuple[Path, str]:
    """A copy of the release file ``path`` whose first 2-d tensor lost its last column; returns the copy and
    the changed key (dotted, as the project's messages name it)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)

    def shrink(node: dict, prefix: str) -> str | None:
        for key, value in node.items():
            if isinstance(value, dict):
                found = shrink(value, f"{prefix}{key}.")
                if found:
                    return found
            elif isinstance(value, torch.Tensor) and value.dim() >= 2 and value.is_floating_point():
                node[key] = value[..., :-1].clone()
                return f"{prefix}{key}"
        return None

    key = shrink(payload, "")
    if key is None:
        raise ValueError(f"{path} holds no 2-d tensor to change")
    torch.save(payload, out)
    return out, key


def expect_refusal(report: ParityReport, quantity: str, load, expected: str) -> None:
    """Add a row that passes when ``load()`` raises a ``ValueError`` whose message holds ``expected``."""
    try:
        load()
    except ValueError as error:
        message = str(error)
        report.note(f"  ({quantity}: {message})")
        report.add(quantity, 0.0 if expected in message and "\n" not in message else 1.0, REFUSED_TARGET)
        return
    report.note(f"  ({quantity}: loaded without an error)")
    report.add(quantity, 1.0, REFUSED_TARGET)


def release_file_rows(
    report: ParityReport,
    path: Path,
    make_module: Callable[[], Any],
    category: str,
    images: torch.Tensor,
    their_maps: torch.Tensor,
    their_scores: torch.Tensor,
    *,
    prefix: str = "release file",
    score_name: str = "image score",
    written_by: str | None = None,
    details: str = "",
) -> None:
    """Our method loads the official file with ``ckpt_path`` and scores the images the official test
    scored after loading the same file: rows ``<prefix>: final map`` and ``<prefix>: <score_name>``.

    Args:
        make_module: a fresh module of our method (the harness seeds the random state before the call).
        written_by: what wrote the file, for the note line (no note when None); ``details`` is added to
            the note's size in brackets.
    """
    module = make_module()
    module.load_trainable_checkpoint(str(path))
    module.setup_category(category, None)
    with torch.no_grad():
        prediction = module.predict_images(images)
    if written_by is not None:
        report.note(
            f"release file written by {written_by} ({path.stat().st_size} bytes{details}), origin "
            f"{module.checkpoint_origin}"
        )
    report.add(f"{prefix}: final map", max_abs(prediction.anomaly_map, their_maps))
    report.add(f"{prefix}: {score_name}", max_abs(prediction.image_score, their_scores))


def aprilgan_prompts() -> PromptSet:
    """APRIL-GAN's prompt set as ``conf/prompts/aprilgan.yaml`` states it."""
    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "aprilgan.yaml"))
    node.pop("_target_")
    return PromptSet(**node)


def refusal_rows(
    report: ParityReport,
    path: Path,
    make_module: Callable[[], Any],
    backbone: Any,
    release: str,
    method: str,
    tmp: Path,
) -> None:
    """The release file with one wrong shape is refused by a fresh module of ours, naming the key; the file
    given to ``method=aprillab`` is refused as the authors' release of ``release``, made for ``method``."""
    wrong, key = with_one_wrong_shape(path, tmp / "wrong_shape.pth")
    fresh = make_module()
    expect_refusal(
        report,
        "release file with one wrong shape refused",
        lambda: fresh.load_trainable_checkpoint(str(wrong)),
        f"key '{key}' has shape ",
    )
    other = AprilGANModule(backbone, aprilgan_prompts())
    expect_refusal(
        report,
        "this release given to method=aprillab refused",
        lambda: other.load_trainable_checkpoint(str(path)),
        f"is the authors' release of {release}, made for method={method}",
    )
