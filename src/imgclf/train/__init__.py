"""The training run: the config loader every tool shares (config.py), LightningCLI fit then test (run.py), its
run folder, checkpoints, artifacts, DVCLive tracking, DDP settings, divergence stop, the experiment grid and the
image-cache tool."""
