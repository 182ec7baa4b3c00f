"""LD3 core: learn few-step sampling schedules through ComfyUI's own samplers (arXiv 2405.15506)."""

__version__ = "0.1.0"  # the pack's version, as pyproject.toml's [project] version (a test keeps them equal)
