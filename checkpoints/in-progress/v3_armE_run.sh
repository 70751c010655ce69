#!/bin/bash
# issue 24, arm E (drift): arm C's final weights on the same realistic-precise data, crops and rate, with four
# times arm C's drift penalty (the motorcycle pair's EPE still rises 0.3 px from its best count to 60
# iterations); 1,000 steps, snapshots every 100.
RUN=/work/runs/v3-armE-drift
cd $RUN && exec nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$RUN/src /work/main/.venv/bin/deqflow train \
    --stage synthetic --synthetic-preset realistic-precise --tiny --encoder-dims 32 48 64 \
    --num-steps 1000 --batch-size 2 --image-size 320 448 --lr 1e-5 \
    --f_solver fixed_point --f_thres 60 --n_losses 6 --phantom_grad 1 --eval_f_thres 60 --drift-weight 4.0 \
    --ckpt-every 20 --snapshot-every 100 --val-every 100000 --val-samples 16 --log-every 5 \
    --init $RUN/init.pth --output $RUN --resume auto
