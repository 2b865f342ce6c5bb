"""Reports: turn a run directory's records into ``report.md`` with plots a person would rather look at."""
