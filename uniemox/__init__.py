"""UniEmoX: two-stream MAE pretraining distilled from a frozen CLIP teacher (arXiv 2409.18877), done right."""

__version__ = "0.1.0"
