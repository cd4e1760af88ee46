"""Weight files: find and check them for each variant, write tiny models, `selva-weights`."""
