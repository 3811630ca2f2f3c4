"""Distillation losses, each a small module citing the definition it implements.

    logit.py        Hinton et al. 2015: a*CE + (1-a)*T^2*KL (also used by engine.Distill)
    teacher.py      the frozen teacher: one pass gives logits, features and its last block's attention
    pca.py          Liu et al. 2022 (CAKD, ACCV): Partially Cross-Attention projector
    gl.py           Liu et al. 2022: Group-wise Linear projector
    adversarial.py  Liu et al. 2022, multi-view robust training: a discriminator behind gradient reversal
    multiview.py    Liu et al. 2022: the student sees a perturbed view, the teacher the clean one
    fmap.py         feature-map KD (FitNets-style hint on the last stage) for ConvNeXtV2 teachers
    task.py         the composed task, terms and weights from a config

Kept free of imports at package level: ``training.engine`` imports ``training.kd.logit``.
"""
