#!/bin/bash
# issue 24, capacity arm A: current widths (T, 32/48/64) continued from the shipped phase-5 weights on the
# phase-5 recipe (320x448 crops, realistic-mix), the equal-CPU-time baseline a wider model is scored against.
RUN=/work/runs/v3-armA-T
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-mix --tiny --encoder-dims 32 48 64 \
    --num-steps 1200 --batch-size 2 --image-size 320 448 --lr 2e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
