"""attack: audits of segmentation models (learned deformation + bias attacks, PGD/FGSM baselines)."""
