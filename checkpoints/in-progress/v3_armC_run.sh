#!/bin/bash
# issue 24, arm C (precision): the shipped T weights (32/48/64) on the realistic-precise preset (realistic-mix with
# half the photograph-like scenes moving 0.2-3 px; the test photographs withdrawn from the pool), half arm A's
# rate, 2,000 steps; snapshots every 100 steps for the validation curve and snapshot averaging.
RUN=/work/runs/v3-armC-precise
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-precise --tiny --encoder-dims 32 48 64 \
    --num-steps 2000 --batch-size 2 --image-size 320 448 --lr 1e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 1.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
