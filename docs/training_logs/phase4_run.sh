#!/bin/bash
# issue 16, phase 4: from the shipped phase-3 model, photograph-like data with 30% classic layered scenes mixed in
# (phase 3 lost about 1 px on large synthetic motion), the same low rate on a 4x longer schedule, and a doubled
# drift penalty (phase 3 left 0.06 / 0.20 px between the EPE at 60 iterations and the best count).
RUN=/work/runs/realistic-T-p4
cd $RUN && exec nice -n 10 env OMP_NUM_THREADS=2 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-mix --tiny --encoder-dims 32 48 64 \
    --num-steps 4000 --batch-size 4 --image-size 192 256 --lr 5e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 200 --val-every 1000 --val-samples 16 --val-real --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
