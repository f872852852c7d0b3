"""Network definitions only. Constants that torch-free configuration code needs live here, so that reading a
config (the CLI's defaults) never imports torch."""

UPSAMPLE_MODES = ("transposed", "resize")  # CycleGAN generator up-sampling: transposed conv or resize + conv
