"""The extraction pipeline: one module per stage.

:mod:`.sources` lists a dataset, :mod:`.reader` reads and decodes it (:mod:`.decode`),
:mod:`.engines` embeds (locally or through an embedder such as the service's remote one;
:mod:`.ray_engine` on Ray), :mod:`.recorder` turns results into cache rows that
:class:`featcache.store.CacheWriter` writes; :mod:`.runner` wires them. ``featcache.extract``
(:mod:`featcache.extraction`) is the one entry point that knows every engine.
"""
