"""LD3 Train Sigmas widget values for the paper's recipe (latent models), shared by the demo graph and
the example workflows. The sampler, step count, loss and schedule name are each graph's own."""

TRAIN_RECIPE = {
    "soft_gamma": 0.001,
    "decoupled_times": True,
    "epochs_phase1": 2,
    "epochs_phase2": 3,
    "lr_steps": 0.001,
    "batch_size": 1,
    "seed": 0,
}
