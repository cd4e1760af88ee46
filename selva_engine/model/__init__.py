"""The model: variants, the MM-DiT generator and its layers, LoRA, flow matching."""
