"""The stage-one HDF5 cache, its one home: schema and fingerprints (`schema`), safe writing
(`writer`), reading (`reader`) and looking after caches (`admin`: ls, inspect, verify, clean).

Schema (docs/cache.md): /sims [R,N,V,C] f16 raw cosine similarities (view 0 = global), /scores
[R,N,C] f16 DAMP score f and /pseudo [R,N,C] i8 under the defaults in attrs["selection"],
optional embeddings, /done and /bad row masks, /image_ids, /classnames, /observed, /labels,
/text_features, /relation; attrs: fingerprint (JSON), schema_version, complete, versions, created.
"""
from aevlp.cache.reader import Cache
from aevlp.cache.schema import (EMBEDDING_MODES, SCHEMA_VERSION, CacheLayout, dataset_hash, default_path,
                                fingerprint_diff, fingerprint_id, lock_path, partial_path, read_fingerprint)
from aevlp.cache.writer import CacheLock, CacheWriter

__all__ = ["SCHEMA_VERSION", "EMBEDDING_MODES", "default_path", "dataset_hash", "fingerprint_diff", "fingerprint_id",
           "CacheLock", "CacheLayout", "CacheWriter", "Cache", "partial_path", "lock_path", "read_fingerprint"]
