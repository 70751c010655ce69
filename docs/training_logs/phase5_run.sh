#!/bin/bash
# issue 16 experiment: does training on larger crops (320x448, batch 2) shrink the drift on large real motion?
RUN=/work/runs/realistic-T-p5-large
cd $RUN && exec nice -n 10 env OMP_NUM_THREADS=2 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-mix --tiny --encoder-dims 32 48 64 \
    --num-steps 800 --batch-size 2 --image-size 320 448 --lr 2e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 200 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
