"""The two-tower model, its training (`run.run_fn`) and its serving export."""
