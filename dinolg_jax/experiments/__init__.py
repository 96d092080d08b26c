"""End-to-end experiments: the resumable stages, the DINO vs DINO-LG ablation, the demo."""
