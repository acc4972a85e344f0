"""Train a FairNAS supernet (default: strict fairness), or one architecture stand-alone.

python train.py                                   # sf supernet, fairnas_mini, Fashion-MNIST
python train.py sampler=ef trainer.devices=4      # another sampler, DDP on 4 devices
python train.py arch=fairnas_a search_space=fairnas_imagenet dataset=imagenet dataset.root=/data/imagenet

The program is fairnas.cli.train (installed as the fairnas-train command); this script runs it from a checkout.
"""

from fairnas.cli.train import main

if __name__ == "__main__":
    main()
