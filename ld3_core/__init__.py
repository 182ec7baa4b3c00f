"""LD3 core: learn few-step sampling schedules through ComfyUI's own samplers (arXiv 2405.15506)."""
