"""Know a dataset from its cache: duplicates, leakage, outliers, label issues (:mod:`.audit`)
and exact cosine search (:mod:`.search`), over the features through ``CacheReader``."""
