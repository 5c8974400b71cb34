"""Data loading: image and DICOM reading, datasets and transforms."""
