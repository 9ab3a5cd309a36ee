"""Backbones: the registries (keras.applications, keras-hub), building a frozen feature
extractor from a :class:`~featcache.core.settings.BackboneConfig`, resizing, and rebuilding the
extractor a cache records (:mod:`.rebuild`)."""
