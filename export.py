"""Export a trained network to ONNX and a torch.export program, each checked against PyTorch.

The program is fairnas.cli.export (installed as the fairnas-export command); this script runs it from a checkout.
"""

from fairnas.cli.export import main

if __name__ == "__main__":
    main()
