"""Unpaired 2-D translation (CycleGAN, after Becker et al.) between healthy (domain A) and lesion (domain B)
images: inject = A→B, remove = B→A. Mammograms, other 2-D images and in-plane CT patches.

    build_trainset(domain_a, domain_b, out, TrainsetOptions(...))   # `medfake trainset cyclegan`
    train(trainset, run, CycleGANConfig.resolve("cpu-small"))         # `medfake train cyclegan`
    load_cyclegan(run, "inject")                                      # what `medfake tamper --method cyclegan` uses
"""
