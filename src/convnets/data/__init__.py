"""Datasets, augmentation and loaders."""
