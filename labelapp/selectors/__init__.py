"""Reads: everything a page, the API or a worker shows or trains on. Nothing here writes; writes go through labelapp.services."""
