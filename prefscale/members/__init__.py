"""Cheap ensemble members: hand-made battle features and TF-IDF differences.

They cost seconds, see things the neural models miss (verbosity and position biases of arena
voters), and write OOF logits in the same Parquet format as the neural models, so stacking
treats every member alike.
"""
