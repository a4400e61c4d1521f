"""The mmfuse command line (`mmfuse ...`, or `python -m mmfuse ...`)."""
