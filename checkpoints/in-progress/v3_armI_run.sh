#!/bin/bash
# issue 24, arm I (less gradient noise): the shipped v3 weights (arm E's end) on arm E's recipe (realistic-precise,
# 320x448, 1e-5, drift penalty 4) with batch 4 instead of 2, the direct way to the smaller snapshot swing that arm
# H's weight average aims at; 500 steps (about the CPU time of 1,000 at batch 2), snapshots every 50.
RUN=/work/runs/v3-armI-batch4
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-precise --tiny --encoder-dims 32 48 64 \
    --num-steps 500 --batch-size 4 --image-size 320 448 --lr 1e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 4.0 \
    --ckpt-every 10 --snapshot-every 50 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
