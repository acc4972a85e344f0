"""The command-line programs: ``train``, ``search``, ``study`` and ``report``.

Each is installed as a console command (``fairnas-train``, ...) and run from a checkout as
``python train.py`` (thin scripts at the top level). The Hydra configs are the package's ``conf``
folder (the checkout's top-level ``conf/``), so both find them wherever they are run from.
"""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
