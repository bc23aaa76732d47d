"""Numerical parity of our methods with their official code: ``python -m bench.parity <method>``.

Each ``bench/parity/<method>.py`` gives both sides the same random weights and inputs, compares what they
compute (text features, maps, scores; loss and gradients where the method trains) and fills a
:class:`bench.report.ParityReport`. The official code is imported from a checkout given at run time
(``--official DIR``, or the make variable named below), never copied into this repository.
"""

#: method -> what its harness compares against (shown by ``python -m bench.parity --help``).
METHODS = {
    "winclip": "anomalib's WinCLIP in the side env of `make parity-venv` (--official PYTHON, optional)",
    "aprillab": "ByChelsea/VAND-APRIL-GAN (APRILGAN_DIR)",
    "anomalyclip": "zqhang/AnomalyCLIP (ANOMALYCLIP_DIR)",
    "adaclip": "caoyunkang/AdaCLIP (ADACLIP_DIR)",
    "musc": "xrli-U/MuSc (MUSC_DIR)",
    "promptad": "FuNz-0/PromptAD (PROMPTAD_DIR)",
    "aaclip": "Mwxinnn/AA-CLIP (AACLIP_DIR)",
    "faprompt": "mala-lab/FAPrompt (FAPROMPT_DIR)",
    "bayespfl": "xiaozhen228/Bayes-PFL (BAYESPFL_DIR)",
    "anomalydino": "dammsi/AnomalyDINO (ANOMALYDINO_DIR), DINOv2 from facebookresearch/dinov2 (DINOV2_DIR)",
}
