"""The resource plan: what each process of a recipe needs (GPU, host, disk), from the real architectures."""
