# The commands of docs/ranking-over-training.md, as run (from /work/main, then a fixed copy of the code)
# Fashion-MNIST sweep, two streams:
M="callbacks=ranking callbacks.ranking.every_n_paths=645 callbacks.ranking.at_start=true cpu_threads=1 trainer.enable_progress_bar=false"
case $1 in
  A) python train.py -m seed=0 sampler=sf,ef,biased $M hydra.sweep.dir=/work/studies/ranking_sweep/s0
     python train.py -m seed=2 sampler=sf,ef $M hydra.sweep.dir=/work/studies/ranking_sweep/s2a ;;
  B) python train.py -m seed=1 sampler=sf,ef,biased $M hydra.sweep.dir=/work/studies/ranking_sweep/s1
     python train.py -m seed=2 sampler=biased $M hydra.sweep.dir=/work/studies/ranking_sweep/s2b ;;
esac
# the biased jobs of seeds 0 and 1, rerun:
cd /work/studies/code && source /work/main/.venv/bin/activate
M="callbacks=ranking callbacks.ranking.every_n_paths=645 callbacks.ranking.at_start=true cpu_threads=1 trainer.enable_progress_bar=false"
python train.py -m seed=$1 sampler=biased $M hydra.sweep.dir=/work/studies/ranking_sweep/s${1}b
# NAS-Bench-Macro (budget declared in the comments before running):
# The ranking monitor on NAS-Bench-Macro, sf and ef.
# Declared budget (before running): 2 epochs of 20,000 CIFAR-10 training images, batch 128 (312 batches; sf
# 312 steps of 3 paths, ef the same 936 single-path passes in 936 steps, via max_paths=936), 1 thread each,
# two at a time. The monitor scores 40 FLOPs-stratified networks of the benchmark at the start and every 234
# passes (5 evaluations), with 4 calibration batches and 8 validation batches of 128 (1,024 images), about
# what the NAS-Bench-Macro study's search scored with. Expected: 3.5-3.7 s per sf step at 1 thread on an idle
# machine (docs/nas-bench-macro-study.md): about 19 min of training and 3-4 min of scoring per supernet.
# A first attempt with 10 calibration batches and all 5,000 validation images was stopped after its first
# evaluation (700-850 s for 40 networks with 4 runs sharing 2 cores): scoring cost 6x what was declared.
cd /work/studies/code && source /work/main/.venv/bin/activate
S=$1
python train.py search_space=nas_bench_macro dataset=cifar10_folder dataset.root=/work/data/cifar10-jpeg \
  dataset.val_size=5000 dataset.split_seed=0 dataset.train_subset=20000 dataset.batch_size=128 \
  sampler=$S max_paths=936 system.val_archs=4 trainer.max_epochs=100 trainer.check_val_every_n_epoch=1 \
  callbacks=ranking callbacks.ranking.every_n_paths=234 callbacks.ranking.at_start=true \
  callbacks.ranking.bn_batches=4 callbacks.ranking.val_batches=8 \
  cpu_threads=1 trainer.enable_progress_bar=false trainer.enable_model_summary=false \
  hydra.run.dir=/work/studies/macro/$S
