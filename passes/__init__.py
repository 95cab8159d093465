"""Graph passes on one graph layer (:mod:`.graph`, onnx-graphsurgeon) under one contract
(:mod:`.contract`): ``transforms/`` edit a graph and say whether they changed it, ``analysis/``
only read one (thesis fig. 9.1: load -> fold BN -> find layers -> insert quantizers -> set
formats, in :mod:`.pipeline`). Nothing here imports :mod:`ristretto_onnx.runtime`.
"""
