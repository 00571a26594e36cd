"""The core: static layouts, descriptors and their encodings, device meshes.

Nothing here imports training, data or the command line.
"""
