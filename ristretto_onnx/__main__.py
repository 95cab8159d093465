from ristretto_onnx.cli import main

main()
