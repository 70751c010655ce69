#!/bin/bash
# issue 24, capacity arm B: encoders widened 32/48/64 -> 48/64/96 from the shipped phase-5 weights by
# scripts/widen_checkpoint.py (function-preserving: it starts at the shipped model's accuracy), then the same
# recipe as arm A (v3_armA_run.sh); scored against arm A on a CPU-hour axis (scripts/training_curve.py).
RUN=/work/runs/v3-armB-wide
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-mix --tiny --encoder-dims 48 64 96 \
    --num-steps 1200 --batch-size 2 --image-size 320 448 --lr 2e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
