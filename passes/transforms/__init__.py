"""Graph transformations on the pass contract (:mod:`ristretto_onnx.passes.contract`): fold
BatchNormalization, insert quantizer slots, set formats."""
