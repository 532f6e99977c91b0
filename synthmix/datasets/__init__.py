"""The data layer: manifests, NIfTI loading, phantoms, splits, preprocessing cache, mixing."""
