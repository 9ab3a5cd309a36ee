"""Know a dataset from its cache: duplicates, leakage, outliers, label issues (:mod:`.audit`),
exact cosine search (:mod:`.search`) and 2-D maps (:mod:`.plot`), over the features through
``CacheReader``."""
