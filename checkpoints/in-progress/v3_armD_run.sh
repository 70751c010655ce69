#!/bin/bash
# issue 24, arm D (larger crops): arm C's final weights on the same realistic-precise data at arm C's rate, with
# 384x512 crops instead of 320x448 (phase 5 found larger crops help); 1,000 steps, snapshots every 100.
RUN=/work/runs/v3-armD-crops
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-precise --tiny --encoder-dims 32 48 64 \
    --num-steps 1000 --batch-size 2 --image-size 384 512 --lr 1e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
