"""Benchmarks of the node against real peers (dcmtk storescp, Orthanc): ``make bench``.

``python -m benchmarks.run`` runs ingest, end to end, inference and scale-out, and writes
``benchmarks/results/latest.md`` (tables) and ``latest.png`` (plot). Nothing here is imported by the node.
"""
