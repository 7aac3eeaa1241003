#!/bin/bash
# Two-stage fits with the ceiling at a quantile of h, on last session's MMVAE+ (seed 0), then their chains and tails.
cd /work/proto2
export PYTHONPATH=/work/proto2 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
for q in 0.9 0.5; do
  out=/work/runs/quantile/two_stage_q$q
  $PY examples/polymnist.py --data-root /work/data/polymnist --source-root ../shared/data --cache-dir /work/data/cache \
    --latent-dim 32 --batch-size 64 --seed 0 --device auto --eval-size 2000 --joint-samples 2000 --epochs 12 \
    --prior ebm --ebm-ceiling-margin 2 --ebm-ceiling-quantile $q --two-stage-from /work/runs/protocol8cap/laplace_private \
    --two-stage-epochs 10 --out $out > $out.log 2>&1
  $PY bench/generation_chains.py --run $out --steps 0 500 1000 --step-sizes 0.1 0.3 --adjust ula mala --eval-size 2000 \
    --samples 2000 --modalities m1 m2 m3 --out $out/generation_chains_m123 > $out.chains.log 2>&1
done
$PY bench/prior_tails.py /work/runs/protocol8cap/two_stage_private /work/runs/quantile/two_stage_q0.9 /work/runs/quantile/two_stage_q0.5 \
  --out /work/runs/quantile/prior_tails.json > /work/runs/quantile/prior_tails.log 2>&1
echo done > /work/runs/quantile/done
