"""Battle -> model input: templates, per-component token budgets, A/B swap."""
