"""Datasets: released layouts -> Parquet manifests of spectral tuples, decoding, augmentation,
synthetic benchmark."""
