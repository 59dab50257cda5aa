"""The stage-one HDF5 cache, its one home: schema and the fingerprint (`schema`), safe writing
(`writer`), reading (`reader`), checking (`validate`), the summary (`summary`), looking after caches
(`admin`: ls, inspect, verify, clean) and getting labels out (`export`).

Schema (docs/cache.md): /sims [R,N,V,C] f16 raw cosine similarities (view 0 = global), /scores
[R,N,C] f16 DAMP score f and /pseudo [R,N,C] i8 under the defaults in attrs["selection"],
optional embeddings, /done and /bad row masks, /image_ids, /classnames, /observed, /labels,
/text_features, /relation; attrs: fingerprint (JSON), schema_version, complete, versions, created.
"""
from aevlp.cache.lock import CacheLock
from aevlp.cache.reader import Cache
from aevlp.cache.schema import (
                                EMBEDDING_MODES,
                                IMAGE_SIDE,
                                SCHEMA_VERSION,
                                CacheLayout,
                                can_reprompt,
                                clip_preprocess,
                                dataset_hash,
                                default_path,
                                fingerprint_diff,
                                fingerprint_id,
                                lock_path,
                                partial_path,
                                read_fingerprint,
                                shard_fingerprint,
                                stage_one_fingerprint,
)
from aevlp.cache.writer import CacheWriter

__all__ = ["SCHEMA_VERSION", "EMBEDDING_MODES", "IMAGE_SIDE", "default_path", "dataset_hash", "fingerprint_diff",
           "fingerprint_id", "stage_one_fingerprint", "shard_fingerprint", "clip_preprocess", "can_reprompt",
           "CacheLock", "CacheLayout", "CacheWriter", "Cache", "partial_path", "lock_path", "read_fingerprint"]
