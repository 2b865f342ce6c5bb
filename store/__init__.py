"""The run directory, the one store everything reads a run through: names, records, train.db, summaries."""
