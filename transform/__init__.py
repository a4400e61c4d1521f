"""Preprocessing shared by training (tf.Transform) and the serving graph."""
