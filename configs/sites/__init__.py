"""Where workers run: Parsl sites, executor labels, the SSH provider, Globus Compute and the task servers."""
