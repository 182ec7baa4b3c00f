"""The pack's one boundary with ComfyUI: every ComfyUI import and every attribute of its objects the pack
reads or patches lives in this package; the rest of ``ld3_core`` is torch only (tests/test_pack_loads.py
enforces it), and ``nodes/`` adds only folder paths, the node schema (``comfy_api``), progress / cancel and
the server's text channel.

Modules: ``adapter`` (sampling through ComfyUI's CFGGuider and samplers, with and without gradients;
Dynamic VRAM's static delegate; frozen weights; out-of-memory advice), ``solvers`` (ComfyUI's sampler code
re-run with gradients), ``model_patch`` (the learned schedule on a MODEL), ``scheduler`` (the ``ld3``
KSampler scheduler), ``registry`` (sampler and scheduler names, KSampler's sigmas, the fixed-table scheduler
nodes, the model's sampling type and sigma range), ``identity`` (a model's fingerprint), ``vae`` (the
differentiable decode for LPIPS), ``mixture_model`` (the exact mixture as a ComfyUI MODEL) and
``requirements`` (what is checked when the pack loads).

What it relies on. Every item is present in ComfyUI 0.3.75 (installed and run by the tests) and in the
0.38.1 sources (read: ``comfy/samplers.py``, ``model_patcher.py``, ``model_sampling.py``,
``patcher_extension.py``, ``model_management.py``, ``sample.py``, ``k_diffusion/sampling.py``,
``extra_samplers/uni_pc.py``, ``comfy_extras/nodes_align_your_steps.py``, ``nodes_gits.py``,
``nodes_optimalsteps.py``, ``comfy_execution/utils.py``); ``requirements.REQUIRED`` is checked at load.

- ``comfy.samplers``: ``SAMPLER_NAMES``, ``SCHEDULER_NAMES`` (appended to in place), ``SCHEDULER_HANDLERS``
  and ``SchedulerHandler`` (the ``ld3`` scheduler), ``KSampler`` (its ``sigmas``, and
  ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS``), ``KSAMPLER``, ``sampler_object``, ``CFGGuider``
  (``set_conds``, ``set_cfg``, ``sample``).
- ``comfy.k_diffusion.sampling``, ``comfy.extra_samplers.uni_pc``, ``comfy.k_diffusion.deis``: the sampler
  sources, re-executed with gradients (``solvers.grad_twin``).
- ``comfy.model_patcher.ModelPatcher``: ``clone``, ``add_object_patch("model_sampling")``,
  ``add_wrapper_with_key``, ``get_model_object``, ``model`` (``diffusion_model``, ``latent_format``,
  ``model_sampling``), ``backup`` and ``patches`` (the fingerprint); newer only,
  feature-detected: ``is_dynamic()`` / ``get_non_dynamic_delegate()`` (Dynamic VRAM).
- ``comfy.patcher_extension``: ``WrappersMP.APPLY_MODEL`` (recompute in backward),
  ``PREPARE_SAMPLING`` (weights as constants), ``SAMPLER_SAMPLE`` (the sampler check of a learned MODEL),
  ``DIFFUSION_MODEL``, ``get_all_wrappers``, ``WrapperExecutor`` (the mixture model's forward).
- ``comfy.model_sampling``: ``ModelSamplingDiscrete`` (continuous timesteps for SD1.x / SDXL), ``CONST``
  (flow models); of any sampling object ``sigma_min``, ``sigma_max``, ``sigmas``, ``log_sigmas``,
  ``timestep``, ``sigma``, ``calculate_input``, ``calculate_denoised``, ``shift``, ``multiplier``.
- ``comfy.model_management``: ``OOM_EXCEPTION``, ``load_models_gpu``; newer only, feature-detected:
  ``in_training``.
- ``comfy.sample.fix_empty_latent_channels`` (the latent shape KSampler samples).
- VAE: ``patcher``, ``first_stage_model.decode``, ``process_output``, ``vae_dtype``, ``device``.
- ``comfy_extras`` scheduler nodes' ``execute`` (AYS, GITS, OptimalSteps; optional: a ComfyUI without one
  simply offers no such candidate).
- ``comfy.model_base`` (``BaseModel``, ``ModelType``), ``comfy.supported_models_base.BASE``,
  ``comfy.latent_formats.LatentFormat``: only to build the exact mixture MODEL.
- ``comfy_execution.utils.get_executing_context`` (which node runs, for text shown on it).

Why the learned schedule rides on an object patch of ``model_sampling`` and stays right under Dynamic
VRAM (ComfyUI issue #16490): see ``model_patch``; why training uses the static delegate: see ``adapter``.
"""
