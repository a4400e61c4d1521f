"""The curated schema of raw examples and the dataset contract (README.md)."""
import os

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(SCHEMA_DIR, "schema.pbtxt")
