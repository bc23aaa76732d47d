"""Disk caches shared by the jobs of a sweep: frozen image features, and the locks that make them safe."""

from anomaly_vlm.cache.digest import file_digest
from anomaly_vlm.cache.feature_cache import CacheStats, FeatureCache, FeatureCacheError, backbone_fingerprint
from anomaly_vlm.cache.locks import file_lock, file_locks

__all__ = [
    "CacheStats",
    "FeatureCache",
    "FeatureCacheError",
    "backbone_fingerprint",
    "file_digest",
    "file_lock",
    "file_locks",
]
