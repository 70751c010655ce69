#!/bin/bash
# issue 24, arm H (weight average): the shipped v3 weights (arm E's end) on arm E's recipe (realistic-precise,
# 320x448, 1e-5, drift penalty 4) with an exponential moving average of the weights, decay 0.998 (about 500
# steps): the raw snapshots of one run swing by up to 0.25 px on the validation homographies, and post-hoc
# averaging of snapshots did not help (arm C). Raw and averaged snapshots every 100 steps; 1,500 steps.
RUN=/work/runs/v3-armH-ema
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-precise --tiny --encoder-dims 32 48 64 \
    --num-steps 1500 --batch-size 2 --image-size 320 448 --lr 1e-5 --ema-decay 0.998 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 4.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
