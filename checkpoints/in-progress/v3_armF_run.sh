#!/bin/bash
# issue 24, arm F (stereo-like data): arm C's final weights on realistic-stereo (realistic-precise with a quarter of
# the photograph-like scenes rendered as rectified stereo pairs with disparities up to 32-64 px, the motorcycle
# case) on wide 320x576 crops, arm C's rate; 600 steps, snapshots every 100.
RUN=/work/runs/v3-armF-stereo
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-stereo --tiny --encoder-dims 32 48 64 \
    --num-steps 600 --batch-size 2 --image-size 320 576 --lr 1e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
