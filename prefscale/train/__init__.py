"""Ray Train: K-fold teachers and students, distillation losses, OOF logits."""
