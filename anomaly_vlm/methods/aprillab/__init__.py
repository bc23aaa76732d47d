"""APRIL-GAN (Chen et al., arXiv 2305.17382), selected with ``method=aprillab``.

Naming: the method is APRIL-GAN. ``aprillab`` (the paper calls its approach the "AprilLab
framework") is the user's word for it and stays wherever a user types or reads a value: the
command-line value and config file (``conf/method/aprillab.yaml``), experiment names
(``experiment=aprillab_*``), the ``method`` key of results and checkpoints, and so the name of this
package, which follows the ``method=`` value as every method folder does. Classes carry the paper's
name: :class:`AprilGAN` (torch model) and :class:`AprilGANModule` (Lightning wrapper). The one other
spelling, the prompt set ``prompts=aprilgan``, is a config value naming the released code's prompts.
"""

from anomaly_vlm.methods.aprillab.lightning_module import AprilGANModule
from anomaly_vlm.methods.aprillab.torch_model import AprilGAN
from anomaly_vlm.methods.ops import default_stages

__all__ = ["AprilGAN", "AprilGANModule", "default_stages"]
