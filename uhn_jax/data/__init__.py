"""Datasets: loaders per modality (images, text, graphs, formulas)."""
