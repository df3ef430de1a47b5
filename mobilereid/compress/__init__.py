"""Compression of ViT-ReID: patch elimination and windows (architecture options), AMG head pruning and AMG
key/value token pruning (physical weight surgery), chained by `mobilereid.compress.pipeline.compress`."""
