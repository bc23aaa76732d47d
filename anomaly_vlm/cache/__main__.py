"""``python -m anomaly_vlm.cache {info,clean} [--dir DIR]``: inspect or empty the feature cache.

``info`` lists each namespace (backbone, input size, feature spec, storage dtype) with its entry count
and disk use per image; ``clean`` deletes the entries (``--all`` also the text-embedding cache and the
shared trained checkpoints). ``make cache-clean`` runs ``clean``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from anomaly_vlm.cache.feature_cache import LOCK_FOLDER, SPEC_FILE, FeatureCache, default_cache_root
from anomaly_vlm.cache.locks import file_lock
from anomaly_vlm.wording import counted


def namespace_usage(cache: FeatureCache) -> list[dict]:
    """Per namespace folder: its spec, the number of entries and their bytes."""
    usage: dict[Path, list[int]] = defaultdict(lambda: [0, 0])
    for item in cache.entries():
        folder = Path(item.path).parent.parent
        usage[folder][0] += 1
        usage[folder][1] += item.stat(follow_symlinks=False).st_size
    rows = []
    for folder, (count, size) in sorted(usage.items()):
        spec_path = folder / SPEC_FILE
        spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
        rows.append({"folder": folder.name, "entries": count, "bytes": size, "spec": spec})
    return rows


def info(cache: FeatureCache) -> None:
    rows = namespace_usage(cache)
    if not rows:
        print(f"feature cache {cache.dir}: empty")
        return
    total = sum(row["bytes"] for row in rows)
    entries = counted(sum(row["entries"] for row in rows), "entry", "entries")
    print(f"feature cache {cache.dir}: {entries}, {total / 1e6:.1f} MB")
    for row in rows:
        backbone = row["spec"].get("backbone", {})
        print(
            f"  {row['folder']}  {backbone.get('weights', '?')} @ {backbone.get('image_size', '?')} px  "
            f"{row['spec'].get('storage_dtype', '?')}  {counted(row['entries'], 'image')}  "
            f"{row['bytes'] / max(row['entries'], 1) / 1e6:.3f} MB/image  "
            f"spec={json.dumps(row['spec'].get('feature_spec', {}), sort_keys=True)}"
        )


def clean(cache: FeatureCache, everything: bool) -> None:
    freed = cache.size_bytes() if cache.dir.is_dir() else 0
    if cache.dir.is_dir():
        # Under the eviction lock, so a running job's eviction pass does not race the deletion.
        with file_lock(cache.dir / LOCK_FOLDER / "evict.lock"):
            for child in cache.dir.iterdir():
                if child.name == LOCK_FOLDER:
                    continue
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    print(f"removed {freed / 1e6:.1f} MB of cached features from {cache.dir}")
    if everything:
        root = cache.dir.parent
        for name in ("text", "trained"):
            if (root / name).is_dir():
                shutil.rmtree(root / name)
                print(f"removed {root / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly_vlm.cache", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["info", "clean"])
    parser.add_argument(
        "--dir", default=None, help="feature cache folder (default: $ANOMALY_VLM_CACHE/features)"
    )
    parser.add_argument(
        "--all", action="store_true", help="clean: also the text cache and shared trained checkpoints"
    )
    args = parser.parse_args(argv)
    cache = FeatureCache(args.dir or default_cache_root() / "features")
    if args.command == "info":
        info(cache)
    else:
        clean(cache, args.all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
