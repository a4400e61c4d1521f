"""Offline evaluation shared by the model and the baselines: ranking metrics
(`metrics`), things that rank the catalogue (`rankers`: the pushed SavedModel,
popularity, EASE, BM25) and the protocol of `mmfuse evaluate` (`evaluate`)."""
