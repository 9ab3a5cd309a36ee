"""The gRPC extraction service (``featcache serve``) and its Python client."""
