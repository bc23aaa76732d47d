from anomaly_vlm.methods.musc.torch_model import MuSc, MuScError, lnamd, mutual_scores, rscin

__all__ = ["MuSc", "MuScError", "lnamd", "mutual_scores", "rscin"]
