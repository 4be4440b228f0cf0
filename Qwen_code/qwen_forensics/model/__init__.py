"""Model layer: loading, tiny model, ViT feature tap, forensic heads, LoRA targets."""
