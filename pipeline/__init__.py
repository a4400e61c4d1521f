"""TFX pipeline: data conversion, sample data and the pipeline definition."""
