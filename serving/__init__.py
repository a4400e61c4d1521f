"""Serving: loading pushed models, the gRPC server and client, deployment files."""
