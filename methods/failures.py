"""How worker methods phrase a failure, so that summaries can group failures by their cause.

A record's ``failure_reason`` is ``cause`` or ``cause | program output``: the QC methods write it, the run
directory's summaries (:mod:`store.results`) group by the part before :data:`CAUSE_SEPARATOR`.
"""

CAUSE_SEPARATOR = " | "
"""In a record's ``failure_reason``, separates the cause (what ``summary.json`` groups by) from the program
output that came with it."""
