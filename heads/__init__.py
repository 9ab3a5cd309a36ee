"""Classification heads trained on cached features: a Keras dense head and baselines.

Import from the modules (``featcache.heads.train``, ...) or from ``featcache``; this package
imports nothing heavy itself.
"""
