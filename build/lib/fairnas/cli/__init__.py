"""The command-line programs: ``train``, ``search``, ``study`` and ``report``.

Each is installed as a console command (``fairnas-train``, ...) and run from a checkout as
``python train.py`` (thin scripts at the top level). The Hydra configs are the package's ``conf``
folder (the checkout's top-level ``conf/``), so both find them wherever they are run from.
"""

from pathlib import Path

from fairnas.utils.slurm import requeue_signals

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# In a SLURM job, SLURM's warning signal (USR1/USR2, a time limit or a pre-emption ahead) can come while a
# program is still starting (importing torch takes seconds), and would kill it: from here on it is recorded,
# and training stops after its first step to requeue (fairnas.utils.slurm.RequeueSignals).
requeue_signals.install()
