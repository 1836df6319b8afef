"""YAML presets that are a command's defaults (pipeline.yaml: the main job); values only, read by rlcf.cli.preset."""
