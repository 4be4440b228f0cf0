"""Data layer: index records, validation, letterbox geometry, mask binarisation, collate."""
