"""Audio: reading clips, the resampler check, mel, the audio VAE, vocoders, and the codec that ties them."""
