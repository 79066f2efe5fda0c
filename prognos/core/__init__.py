"""The shared core: contracts, settings, catalog and factories every layer imports."""
