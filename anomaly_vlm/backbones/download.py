"""``make weights``: fetch the pretrained weights of every backbone config into the local cache.

Run on a machine with network; copy the Hugging Face cache (``HF_HUB_CACHE``) and, for DINOv2, torch.hub's
checkpoint folder (``$TORCH_HOME/hub/checkpoints``, or each config's ``cache_dir``) to offline machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.utils import get_class
from omegaconf import OmegaConf

from anomaly_vlm.backbones.weights import WeightsNotFoundError, resolve_weights

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR, help="folder of backbone configs")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default HF_HUB_CACHE)")
    args = parser.parse_args(argv)
    failures = 0
    for config_file in sorted(args.conf_dir.glob("*.yaml")):
        config = OmegaConf.load(config_file)
        if not config.get("pretrained"):
            print(f"{config_file.stem:28s} random init, nothing to download")
            continue
        # Each backbone family resolves its own weights (open_clip tags and the hub cache; DINOv2's
        # releases in torch.hub's checkpoint folder).
        resolve = getattr(get_class(str(config._target_)), "weight_resolver", None) or resolve_weights
        try:
            path = resolve(config.model, config.pretrained, args.cache_dir or config.get("cache_dir"))
            print(f"{config_file.stem:28s} {config.model}:{config.pretrained} -> {path}")
        except (WeightsNotFoundError, ValueError) as error:
            failures += 1
            print(f"{config_file.stem:28s} FAILED: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
