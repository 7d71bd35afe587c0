"""The uncertainty cascade: cheap stages for confident battles, expensive ones only where needed."""
