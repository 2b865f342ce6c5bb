"""Steering: Colmena thinkers whose agent threads decide what to compute next.

Thinkers talk to workers only through Colmena queues; they know no site, no settings class and no command line
(``campaigns/`` builds them), and they read and write the run directory through ``store/``.
"""
