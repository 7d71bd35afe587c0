"""Battle data: schema, readers, validation, deduplication, folds and pair generation."""
