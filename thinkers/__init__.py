"""Steering: Colmena thinkers whose agent threads decide what to compute next, and the run-directory records.

Thinkers talk to workers only through Colmena queues; they never import Parsl and never parse arguments.
"""
