"""LD3 Train Sigmas widget values shared by the demo graph and the example workflows: the default ``ld3``
recipe (the tuning widgets hold its values; they apply only with recipe ``custom``). The sampler, step
count, loss and schedule name are each graph's own."""

TRAIN_RECIPE = {
    "soft_gamma": 0.0,
    "decoupled_times": True,
    "epochs_phase1": 0,
    "epochs_phase2": 40,
    "lr_steps": 0.03,
    "batch_size": 5,
    "seed": 0,
    "recipe": "ld3",
}
