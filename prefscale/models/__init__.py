"""Model building: local paths, the packaged MiniLM, classification heads."""
