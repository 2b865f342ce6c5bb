"""Where and how a campaign runs: validated settings (``settings/``), sites (``sites/``), services (``services/``)."""
