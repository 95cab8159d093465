"""Read-only analyses of a graph: they return data and never edit the graph (find layers,
Concat ties, Clip bounds)."""
