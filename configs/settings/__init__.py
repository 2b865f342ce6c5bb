"""Validated run settings, the search-space file check, and the qcengine.yml loader."""
