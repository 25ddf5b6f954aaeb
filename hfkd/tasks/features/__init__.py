"""Image feature extraction: label-free distillation of a foundation model's embeddings into a backbone."""
