"""Generated gRPC stubs of ``featcache.v1.Extractor`` (see ``generate.py``)."""
