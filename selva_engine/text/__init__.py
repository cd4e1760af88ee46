"""Text conditioning: the CLIP text encoder that turns prompts into per-token features."""
