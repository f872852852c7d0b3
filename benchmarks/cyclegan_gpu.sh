#!/bin/bash
# The GPU part of benchmarks/cyclegan.py (CT_MINUTES caps each CT run), as one command (the device machine has torch but no SimpleITK or
# pydicom: training needs neither, so a stub stands in for SimpleITK's import). Expects the training sets
# of `python benchmarks/cyclegan.py sets` in runs/bench_cyclegan/sets. CT_STEPS, MG_STEPS, MG_MINUTES tune it.
set -u
OUT=${OUT:-/tmp/cyclegan_gpu_out}; mkdir -p "$OUT"
STUB=$(mktemp -d); touch "$STUB/SimpleITK.py"
export PYTHONPATH="$PWD/src:$STUB" PYTHONUNBUFFERED=1
PY=${PY:-python3}
B=benchmarks/cyclegan.py
[ -n "${SKIP_TP:-}" ] || $PY $B throughput --steps "${TP_STEPS:-10}" --name cyclegan_throughput_gpu > "$OUT/throughput.log" 2>&1 &
wait
for up in transposed resize; do
  $PY $B train-ct --upsample $up --steps "${CT_STEPS:-8000}" --snapshot-every 250 --max-minutes "${CT_MINUTES:-4}" > "$OUT/ct_$up.log" 2>&1 &
done
$PY $B train-mammo --preset becker-256 --run mammo_becker256 --steps "${MG_STEPS:-20000}" --snapshot-every 500 \
    --max-minutes "${MG_MINUTES:-5}" > "$OUT/mammo.log" 2>&1 &
wait
for run in ct_transposed ct_resize mammo_becker256; do
  d=runs/bench_cyclegan/runs/$run
  cp -r $d/model $d/model_final
  $PY -c "import sys; from medfake.tamper.cyclegan.train import select_before_artefacts as s; print(s(sys.argv[1]))" $d \
      >> "$OUT/select.log" 2>&1 || echo "$run: no selection" >> "$OUT/select.log"
  rm -f $d/snapshots/*.pt
  ls $d/snapshots | head -n -2 | grep png | sed "s|^|$d/snapshots/|" | xargs -r rm -f
done
rm -rf runs/bench_cyclegan/runs/mammo_becker256/model_final
tar czf "$OUT/runs.tgz" --exclude="*/checkpoints" -C runs/bench_cyclegan runs
cp benchmarks/results/cyclegan_throughput_gpu.json "$OUT/" 2>/dev/null
split -b 15M "$OUT/runs.tgz" "$OUT/runs.tgz.part-" && rm "$OUT/runs.tgz"
for f in "$OUT"/*.log; do echo "== $f"; cat "$f"; done > "$OUT/all.txt"; rm -f "$OUT"/*.log
tail -c 6000 "$OUT/all.txt"; ls -la "$OUT"
