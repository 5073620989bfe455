"""The shipped demo model: procedural scenes, training script, weights."""
