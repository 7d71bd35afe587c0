"""Batch scoring on Ray Data: actor pools of model replicas writing logits keyed by id."""
