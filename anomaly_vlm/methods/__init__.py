"""Methods: one folder each, a pure torch model plus a thin Lightning wrapper.

One name per method: the folder, the config file ``conf/method/<name>.yaml``, the ``method=<name>``
value and the module's ``method_name`` are the same word; classes carry the paper's name
(``method=aprillab`` is APRIL-GAN: ``AprilGAN``, ``AprilGANModule``).
"""

from anomaly_vlm.methods.base import AnomalyMethod

__all__ = ["AnomalyMethod"]
