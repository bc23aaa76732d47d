from anomaly_vlm.methods.aprillab.lightning_module import AprilGANModule
from anomaly_vlm.methods.aprillab.torch_model import AprilGAN, default_stages

__all__ = ["AprilGAN", "AprilGANModule", "default_stages"]
