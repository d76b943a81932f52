"""Self-supervised pretraining: methods (MAE, DINOv2-style), their views, and the `medfm pretrain` job."""
