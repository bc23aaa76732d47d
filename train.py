"""Train (when the method has trainable parameters) and test. ``python train.py --help`` lists groups."""

import hydra
from omegaconf import DictConfig

import anomaly_vlm.config  # noqa: F401  (typed schema and resolvers, registered before Hydra composes)
from anomaly_vlm.entry import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from anomaly_vlm.tasks import train

    return train(cfg)


if __name__ == "__main__":
    check_command_line("train")
    main()
