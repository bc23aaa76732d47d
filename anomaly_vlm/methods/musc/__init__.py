from anomaly_vlm.methods.musc.lightning_module import MuScModule
from anomaly_vlm.methods.musc.torch_model import MuSc, MuScError, lnamd, mutual_scores, rscin

__all__ = ["MuSc", "MuScError", "MuScModule", "lnamd", "mutual_scores", "rscin"]
